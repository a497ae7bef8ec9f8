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
)

func newInspect(g *globals) *cobra.Command {
	var platform string
	var chunks bool
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
			if a.Others > 0 {
				fmt.Fprintf(w, "note\t%d more sluice artifacts refer to this image; showing the first by digest\n", a.Others)
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
	cmd.Flags().BoolVar(&chunks, "chunks", false, "also print one line per chunk: INDEX DIGEST STORED_LENGTH")
	return cmd
}
