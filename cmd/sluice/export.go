package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv"
)

func newExport(g *globals) *cobra.Command {
	var platform string
	cmd := &cobra.Command{
		Use:   "export [--plain-http] IMAGE FILE",
		Short: "Write IMAGE's flattened ext4 image, reassembled from its artifact, to FILE",
		Long: `Export fetches IMAGE's sluice artifact, verifies every chunk against its
sha256 and writes the flattened ext4 image to FILE (which must not exist;
all-zero chunks become holes). Mount it with "mount -o ro,loop FILE DIR", or
boot a microVM from it.`,
		Example: `  sluice export registry.example.com/team/app:v1 app.ext4`,
		Args:    exactArgs(2, "IMAGE and FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := convertOptions(g, platform)
			if err != nil {
				return err
			}
			progress := cliutil.NewProgress(g.log)
			err = imageconv.Export(cmd.Context(), args[0], args[1], append(opts, imageconv.WithProgress(progress))...)
			progress.Finish()
			if err != nil {
				return err
			}
			fmt.Printf("wrote %s\n", args[1])
			return nil
		},
	}
	cmd.Flags().StringVar(&platform, "platform", "", "platform of a multi-platform image (default: this machine's, linux/ARCH)")
	return cmd
}
