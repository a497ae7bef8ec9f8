// Command sluiced is the sluice node agent: one process running the
// containerd proxy snapshotter (gRPC on a unix socket), the NBD exports of
// the streamed images, the shared on-disk chunk cache, and a loopback HTTP
// endpoint with /healthz and Prometheus /metrics. See config.sample.toml.
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/cmd/internal/cliutil"
)

const defaultConfigPath = "/etc/sluice/config.toml"

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "sluiced:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

type flags struct {
	config, logLevel string
	configSet        bool // --config was given
}

// load reads the config; without --config, a missing default file means
// every default.
func (f *flags) load() (Config, error) {
	if !f.configSet {
		if _, err := os.Stat(f.config); errors.Is(err, fs.ErrNotExist) {
			c := defaultConfig()
			return c, c.validate()
		}
	}
	return loadConfig(f.config)
}

func newRoot() *cobra.Command {
	f := &flags{}
	root := &cobra.Command{
		Use:   "sluiced [--config FILE] [--log-level LEVEL]",
		Short: "The sluice node agent: a containerd snapshotter that streams images at block level",
		Long: `sluiced runs on every node, as root, in one process:

  - the containerd proxy snapshotter "sluice", on a unix socket (address);
  - one NBD server (nbd_socket, root only) exporting the flattened ext4 image
    of each streamed image, fetched chunk by chunk from its registry into
    the shared on-disk cache (cache.dir) as the kernel reads it;
  - /healthz and Prometheus /metrics on a loopback address (metrics_address).

When containerd (through CRI) unpacks an image whose sluice artifact exists
("sluice convert"), sluiced attaches the export as a read-only block device,
mounts it, and tells containerd every layer already exists: the container
starts without a download. Images without an artifact are pulled the
ordinary way (policy = "fallback", logged and counted with the reason) or
refused (policy = "require"). How devices are attached is chosen at start
and logged (attacher = "auto").

Registry credentials: those a pull came with (with cri_keychain: sluiced
serves the CRI image service in front of containerd's, kubelet's
--image-service-endpoint names it, and pull secrets reach sluiced), then
credentials_file (docker config format), then the docker config
(~/.docker/config.json) and its credential helpers.

containerd's config (/etc/containerd/config.toml) names the socket:

  [proxy_plugins.sluice]
    type = "snapshot"
    address = "/run/sluice/snapshotter.sock"

and CRI must pass the image labels to it. containerd 1.6/1.7 (config version 2):

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "sluice"
    disable_snapshot_annotations = false

containerd 2.x (config version 3; its transfer service passes the labels
only with the exports line, and unpacks only into listed snapshotters):

  [proxy_plugins.sluice.exports]
    enable_remote_snapshot_annotations = "true"
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = "linux/amd64"
    snapshotter = "sluice"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "sluice"

Start sluiced before containerd. SIGTERM or SIGINT stops it; the image mounts
of running containers stay, and the next start adopts them.`,
		Example: `  sluiced --config /etc/sluice/config.toml
  sluiced config --config /etc/sluice/config.toml   # print the effective config
  curl -s 127.0.0.1:9808/metrics | grep ^sluice_`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			f.configSet = cmd.Flags().Changed("config")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, f)
		},
	}
	root.PersistentFlags().StringVar(&f.config, "config", defaultConfigPath, "configuration file (TOML; every field optional, see config.sample.toml); without this flag a missing default file means all defaults")
	root.Flags().StringVar(&f.logLevel, "log-level", "", "override log_level: debug, info, warn or error")
	root.AddCommand(newInstallConfigCmd(f), newReadyCmd(f))
	root.AddCommand(&cobra.Command{
		Use:   "config [--config FILE]",
		Short: "Check the configuration file and print the effective configuration (defaults filled in)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.load()
			if err != nil {
				return err
			}
			return toml.NewEncoder(cmd.OutOrStdout()).Encode(c)
		},
	})
	return root
}

func run(ctx context.Context, f *flags) error {
	cfg, err := f.load()
	if err != nil {
		return err
	}
	if f.logLevel != "" {
		cfg.LogLevel = f.logLevel
	}
	log, err := cliutil.NewLogger(cfg.LogLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %q is not debug, info, warn or error", f.logLevel)
	}
	cliutil.SetMemoryLimit(cfg.Cache.memoryCache)
	ctx = log.WithContext(ctx)
	a, err := startAgent(ctx, cfg)
	if err != nil {
		return err
	}
	err = a.wait(ctx)
	if cerr := a.close(); err == nil {
		err = cerr
	}
	return err
}
