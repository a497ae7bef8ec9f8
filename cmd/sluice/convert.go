package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

func newConvert(g *globals) *cobra.Command {
	var platforms, chunkSize, workDir, signKey string
	cmd := &cobra.Command{
		Use:   "convert [--plain-http] [--platform os/arch[,...]] [--chunk-size SIZE] [--sign-key FILE] IMAGE",
		Short: "Flatten IMAGE into a streamable ext4 artifact and push it next to IMAGE",
		Long: `Convert reads IMAGE from its registry, applies its layers into one
deterministic ext4 filesystem, cuts that into chunks (all-zero chunks are not
stored; the others are zstd-compressed and addressed by the sha256 of their
bytes) and pushes the result as an OCI artifact into IMAGE's repository, with
IMAGE's manifest as its subject. IMAGE itself is not modified, so its tags and
signatures stay valid. A multi-platform IMAGE gets one artifact per platform.

Converting the same image twice gives the same artifact digest. Nothing is
pushed unless every platform converts.

With --sign-key, each artifact is signed (a sigstore bundle stored next to
it, see "sluice sign"): nodes with trust.policy = "signed" use only signed
artifacts.`,
		Example: `  sluice convert registry.example.com/team/app:v1
  sluice convert --plain-http --platform linux/amd64,linux/arm64 127.0.0.1:5000/app:v1
  sluice convert --chunk-size 1MiB registry.example.com/team/app@sha256:...`,
		Args: exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := convertOptions(g, platforms)
			if err != nil {
				return err
			}
			cs, err := cliutil.ParseSize(chunkSize)
			if err != nil {
				return fmt.Errorf("--chunk-size: %w", err)
			}
			if err := artifact.ValidateChunkSize(cs); err != nil {
				return fmt.Errorf("--chunk-size: %w", err)
			}
			if signKey != "" {
				key, err := signature.LoadPrivateKey(signKey)
				if err != nil {
					return fmt.Errorf("--sign-key: %w", err)
				}
				opts = append(opts, imageconv.WithSignKey(key))
			}
			progress := cliutil.NewProgress(g.log)
			opts = append(opts, imageconv.WithChunkSize(cs), imageconv.WithProgress(progress))
			if workDir != "" {
				opts = append(opts, imageconv.WithWorkDir(workDir))
			}
			results, err := imageconv.Convert(cmd.Context(), args[0], opts...)
			progress.Finish()
			if err != nil {
				return err
			}
			printResults(args[0], results)
			return nil
		},
	}
	cmd.Flags().StringVar(&platforms, "platform", "", "convert only these platforms of a multi-platform image, e.g. linux/amd64,linux/arm64 (default: all)")
	cmd.Flags().StringVar(&chunkSize, "chunk-size", cliutil.FormatSizeExact(artifact.DefaultChunkSize), "chunk size: a power of two from 4KiB to 64MiB")
	cmd.Flags().StringVar(&signKey, "sign-key", "", "sign each artifact with this private key (cosign generate-key-pair's format, password from $COSIGN_PASSWORD; or a plain PEM EC P-256 key)")
	cmd.Flags().StringVar(&workDir, "work-dir", "", "directory for temporary files (default $TMPDIR or /tmp); needs about twice the image's size")
	return cmd
}

func printResults(image string, results []imageconv.Result) {
	for _, r := range results {
		s := r.Summary
		fmt.Printf("%s@%s\n", image, r.Artifact)
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		if r.Platform != "" {
			fmt.Fprintf(w, "  platform\t%s\n", r.Platform)
		}
		fmt.Fprintf(w, "  source\t%s\n", r.Source.Digest)
		if r.Signature != (v1.Hash{}) {
			fmt.Fprintf(w, "  signature\t%s\n", r.Signature)
		}
		fmt.Fprintf(w, "  source size\t%s compressed, %s uncompressed, %s\n", cliutil.FormatSize(s.SourceCompressed), cliutil.FormatSize(s.SourceUncompressed), plural(s.Layers, "layer"))
		fmt.Fprintf(w, "  ext4 size\t%s\n", cliutil.FormatSize(s.ImageSize))
		fmt.Fprintf(w, "  artifact size\t%s\n", cliutil.FormatSize(s.ArtifactSize))
		fmt.Fprintf(w, "  chunks\t%d of %s: %d stored (%d distinct), %d all-zero\n", s.Chunks, cliutil.FormatSize(s.ChunkSize), s.Chunks-s.ZeroChunks, s.UniqueChunks, s.ZeroChunks)
		fmt.Fprintf(w, "  elapsed\t%s\n", s.Elapsed.Round(10e6))
		w.Flush()
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
