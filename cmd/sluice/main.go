// Command sluice converts container images into streamable sluice
// artifacts and inspects them.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
)

type globals struct {
	logLevel   string
	plainHTTP  bool
	cpuProfile string
	log        zerolog.Logger
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

// exitError asks for a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "sluice",
		Short: "Stream container images block by block instead of pulling them",
		Long: `sluice makes containers start before their image is downloaded.

"sluice convert" flattens an OCI image into a deterministic ext4 image, cuts it
into compressed, content-addressed chunks and pushes them as an OCI artifact
next to the image (found through the referrers API); the image itself is not
changed. On the node, sluiced serves the ext4 image over NBD and fetches only
the chunks a container reads.

Registry credentials come from the docker config (~/.docker/config.json,
$DOCKER_CONFIG) and its credential helpers.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			l, err := cliutil.NewLogger(g.logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			g.log = l
			if g.cpuProfile != "" {
				f, err := os.Create(g.cpuProfile)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
			}
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if g.cpuProfile != "" {
				pprof.StopCPUProfile()
			}
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.cpuProfile, "cpuprofile", "", "write a Go CPU profile to this file")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	root.PersistentFlags().BoolVar(&g.plainHTTP, "plain-http", false, "talk to the registry over plain HTTP instead of HTTPS")
	root.AddCommand(newConvert(g), newInspect(g), newExport(g), newServe(g), newPull(g), newSign(g), newVerify(g), newConvertService(g))
	return root
}
