package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

func newInspect(g *globals) *cobra.Command {
	var platform string
	var chunks bool
	var keys []string
	cmd := &cobra.Command{
		Use:   "inspect [--plain-http] IMAGE",
		Short: "Say whether IMAGE has a sluice artifact and print its geometry",
		Long: `Inspect looks up IMAGE's sluice artifact through the referrers API and prints
its geometry: ext4 size, chunk size, chunk count and stored bytes. It exits
with status 3 if IMAGE has no artifact (convert it with "sluice convert").`,
		Example: `  sluice inspect registry.example.com/team/app:v1
  sluice inspect --chunks --plain-http 127.0.0.1:5000/app:v1`,
		Args: exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := lookupOptions(g, platform)
			if err != nil {
				return err
			}
			if len(keys) > 0 {
				v, err := signature.LoadVerifier(keys...)
				if err != nil {
					return fmt.Errorf("--key: %w", err)
				}
				opts = append(opts, artifact.WithVerifier(v))
			}
			a, err := artifact.Lookup(cmd.Context(), args[0], opts...)
			if errors.Is(err, artifact.ErrNoArtifact) {
				return exitError{code: 3, err: fmt.Errorf("%s has no sluice artifact; convert it with: sluice convert %s: %w", args[0], args[0], err)}
			}
			if err != nil {
				return err
			}
			ix := a.Index
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(w, "artifact\t%s@%s\n", a.Repo, a.Descriptor.Digest)
			fmt.Fprintf(w, "source\t%s\n", a.Subject.Digest)
			if a.Platform != "" {
				fmt.Fprintf(w, "platform\t%s\n", a.Platform)
			}
			fmt.Fprintf(w, "ext4 size\t%s (%d bytes)\n", cliutil.FormatSize(ix.ImageSize), ix.ImageSize)
			fmt.Fprintf(w, "chunk size\t%s\n", cliutil.FormatSize(ix.ChunkSize))
			fmt.Fprintf(w, "chunks\t%d (%d all-zero)\n", len(ix.Chunks), ix.ZeroChunks())
			fmt.Fprintf(w, "stored bytes\t%s (%d bytes)\n", cliutil.FormatSize(ix.StoredBytes()), ix.StoredBytes())
			if a.Profile != nil {
				fmt.Fprintf(w, "profile\t%s\n", a.Profile.Digest)
			}
			fmt.Fprintf(w, "trust\t%s\n", verdictString(a.Verdict))
			for _, r := range a.Rejected {
				fmt.Fprintf(w, "not used\t%s: %v\n", r.Descriptor.Digest, r.Err)
			}
			w.Flush()
			if chunks {
				for i, c := range ix.Chunks {
					d := "zero"
					if !c.Zero() {
						d = "sha256:" + hex.EncodeToString(c.Digest[:])
					}
					fmt.Printf("%d %s %d\n", i, d, c.Length)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&platform, "platform", "", "platform of a multi-platform image (default: this machine's, linux/ARCH)")
	cmd.Flags().StringSliceVar(&keys, "key", nil, "use only an artifact signed by one of these public keys (PEM, as cosign.pub), as a node with trust.policy = \"signed\" does")
	cmd.Flags().BoolVar(&chunks, "chunks", false, "also print one line per chunk: INDEX DIGEST STORED_LENGTH")
	return cmd
}

// verdictString says why an artifact is trusted.
func verdictString(v artifact.Verdict) string {
	if v.Key != "" {
		return v.Policy + " (key " + v.Key + ")"
	}
	return v.Policy
}
