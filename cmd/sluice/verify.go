package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv"
)

func newVerify(g *globals) *cobra.Command {
	var platforms, workDir string
	cmd := &cobra.Command{
		Use:   "verify [--plain-http] [--platform os/arch[,...]] IMAGE",
		Short: "Reconvert IMAGE locally and check that its sluice artifacts are what it converts to",
		Long: `Verify converts IMAGE again here, pushing nothing, and compares the digest of
each sluice artifact the registry holds for it with the digest the
conversion gives (with that artifact's chunk size). Conversion is
deterministic, so a match means the artifact holds exactly IMAGE's root
filesystem. A CI job can run it to vouch for artifacts others pushed, then
sign them ("sluice sign --artifact DIGEST").

It exits 0 when every artifact matches; otherwise it exits 1 and names, for
each one that does not, the registry's digest and the reconverted one.
An artifact made by another version of sluice may not match.`,
		Example: `  sluice verify registry.example.com/team/app:v1`,
		Args:    exactArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := convertOptions(g, platforms)
			if err != nil {
				return err
			}
			if workDir != "" {
				opts = append(opts, imageconv.WithWorkDir(workDir))
			}
			progress := cliutil.NewProgress(g.log)
			vs, err := imageconv.Verify(cmd.Context(), args[0], append(opts, imageconv.WithProgress(progress))...)
			progress.Finish()
			if err != nil {
				return err
			}
			bad := 0
			for _, v := range vs {
				where := v.Subject.String()
				if v.Platform != "" {
					where = v.Platform + " " + where
				}
				switch {
				case v.Match():
					fmt.Printf("match     %s  artifact %s (%s chunks)\n", where, v.Artifact, cliutil.FormatSizeExact(v.ChunkSize))
				case v.Why != "":
					bad++
					fmt.Printf("MISMATCH  %s  artifact %s: %s\n", where, v.Artifact, v.Why)
				default:
					bad++
					fmt.Printf("MISMATCH  %s  registry holds %s, reconversion gives %s (%s chunks)\n", where, v.Artifact, v.Rebuilt, cliutil.FormatSizeExact(v.ChunkSize))
				}
			}
			if bad > 0 {
				return exitError{code: 1, err: fmt.Errorf("%s: %d of %d artifacts are not what the image converts to", args[0], bad, len(vs))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&platforms, "platform", "", "verify only these platforms of a multi-platform image (default: all)")
	cmd.Flags().StringVar(&workDir, "work-dir", "", "directory for temporary files (default $TMPDIR or /tmp); needs about twice the image's size")
	return cmd
}
