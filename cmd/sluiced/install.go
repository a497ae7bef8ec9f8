package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-project/sluice/snapshot/nodeconfig"
)

// installFlags are install-config's flags.
type installFlags struct {
	containerdConfig, socket, platform string
	trustKeys                          []string
	dryRun, uninstall, force           bool
}

// newInstallConfigCmd is `sluiced install-config`, the config editing of
// scripts/install-node.sh.
func newInstallConfigCmd(f *flags) *cobra.Command {
	in := &installFlags{}
	cmd := &cobra.Command{
		Use:   "install-config --containerd-config FILE [--dry-run] [--uninstall] [--trust-key FILE]...",
		Short: "Set containerd's config (and sluiced's trust keys) up for sluice, keeping the rest of each file as it is",
		Long: `install-config edits containerd's config so that containerd uses sluiced:
the proxy plugin "sluice" on sluiced's socket (--socket, default: address
in sluiced's --config), the CRI snapshotter, and what makes CRI pass the
image labels to it:

  version 2 (containerd 1.6, 1.7): CRI's containerd.snapshotter = "sluice",
    disable_snapshot_annotations = false;
  versions 3, 4 (containerd 2.x): the proxy plugin's exports line
    enable_remote_snapshot_annotations = "true", an unpack_config entry of
    the transfer service naming sluice for --platform, and the CRI images
    plugin's snapshotter = "sluice".

A version 1 config is refused, with how to convert it. Only those keys
change: comments, order and every other key stay byte for byte. Before the
first change the file is copied to FILE.sluice-backup; running again
changes nothing; --uninstall restores the backup byte for byte (refused if
the file changed since, unless --force). A file that does not parse is
refused, with the line and column.

--trust-key (repeatable) edits sluiced's config (--config) too: [trust]
policy = "signed", and keys lists each key file. When containerd's CRI
sets a registry config_path (hosts.toml mirrors) and --config names an
existing sluiced config, its [registry] config_path is set to the same, so that chunks are
fetched through the mirrors containerd pulls through.

Each change is printed as a unified diff; --dry-run prints it and writes
nothing. Restart containerd afterwards (install-node.sh does).`,
		Example: `  sluiced install-config --containerd-config /etc/containerd/config.toml --dry-run
  sluiced install-config --containerd-config /etc/containerd/config.toml
  sluiced install-config --containerd-config /etc/containerd/config.toml --uninstall
  sluiced install-config --config /etc/sluice/config.toml --trust-key /etc/sluice/keys/ci.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInstallConfig(cmd.OutOrStdout(), cmd.ErrOrStderr(), f, in)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&in.containerdConfig, "containerd-config", "", "containerd's config file to edit, e.g. /etc/containerd/config.toml")
	fl.StringVar(&in.socket, "socket", "", "sluiced's snapshotter socket for containerd to dial (default: address in sluiced's --config)")
	fl.StringVar(&in.platform, "platform", "", "platform whose images containerd 2.x unpacks into sluice (default: this machine's)")
	fl.StringArrayVar(&in.trustKeys, "trust-key", nil, "public key file (absolute path) to trust: sets [trust] policy = \"signed\" in sluiced's --config and adds it to keys; repeatable")
	fl.BoolVar(&in.dryRun, "dry-run", false, "print the changes, write nothing")
	fl.BoolVar(&in.uninstall, "uninstall", false, "restore containerd's config from its backup")
	fl.BoolVar(&in.force, "force", false, "with --uninstall: restore the backup even if the file changed since")
	return cmd
}

func runInstallConfig(stdout, stderr io.Writer, f *flags, in *installFlags) error {
	if in.containerdConfig == "" && len(in.trustKeys) == 0 {
		return errors.New("nothing to do: give --containerd-config FILE and/or --trust-key FILE")
	}
	if in.uninstall && len(in.trustKeys) > 0 {
		return errors.New("--trust-key: not with --uninstall")
	}
	if in.force && !in.uninstall {
		return errors.New("--force: only with --uninstall")
	}
	var changes []nodeconfig.Change
	if len(in.trustKeys) > 0 {
		c, err := nodeconfig.InstallTrust(f.config, in.trustKeys, checkConfig, in.dryRun)
		if err != nil {
			return err
		}
		changes = append(changes, c)
	}
	if in.containerdConfig != "" {
		var c nodeconfig.Change
		var err error
		if in.uninstall {
			c, err = nodeconfig.UninstallContainerd(in.containerdConfig, in.force, in.dryRun)
		} else {
			socket := in.socket
			if socket == "" {
				cfg, lerr := f.load()
				if lerr != nil {
					return lerr
				}
				socket = cfg.Address
			}
			c, err = nodeconfig.InstallContainerd(in.containerdConfig, nodeconfig.Options{Socket: socket, Platform: in.platform}, in.dryRun)
		}
		if err != nil {
			return err
		}
		changes = append(changes, c)
		if _, serr := os.Stat(f.config); serr == nil && f.configSet && !in.uninstall {
			// sluiced fetches through the mirrors containerd pulls through.
			rc, err := nodeconfig.InstallRegistryConfigPath(f.config, in.containerdConfig, checkConfig, in.dryRun)
			if err != nil {
				return err
			}
			if rc.Diff != "" {
				changes = append(changes, rc)
			}
		}
	}
	for _, c := range changes {
		printChange(stdout, stderr, c, in.dryRun, !in.uninstall)
	}
	return nil
}

// printChange tells what was done to a file (would be, on a dry run).
func printChange(stdout, stderr io.Writer, c nodeconfig.Change, dryRun, showBackup bool) {
	verb := map[bool]string{false: "changed", true: "would change"}[dryRun]
	for _, n := range c.Notes {
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	if c.Diff == "" {
		fmt.Fprintf(stdout, "%s: nothing to change\n", c.Path)
		return
	}
	fmt.Fprintf(stdout, "%s: %s:\n", c.Path, verb)
	for _, s := range c.Summary {
		fmt.Fprintf(stdout, "  %s\n", s)
	}
	if c.Backup != "" && showBackup {
		fmt.Fprintf(stdout, "  backup: %s\n", c.Backup)
	}
	fmt.Fprint(stdout, c.Diff)
}

// checkConfig checks sluiced's config content b as the agent would at
// start (the trust keys are read and parsed).
func checkConfig(b []byte) error {
	dir, err := os.MkdirTemp("", "sluiced-config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return err
	}
	_, err = loadConfig(p)
	return err
}

// exitError asks for a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// newReadyCmd is `sluiced ready`: wait until sluiced (and containerd)
// answer.
func newReadyCmd(f *flags) *cobra.Command {
	var containerdConfig string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ready [--config FILE] [--containerd-config FILE] [--timeout 60s]",
		Short: "Wait until sluiced answers (its socket and /healthz), and containerd has loaded the sluice snapshotter",
		Long: `ready waits until sluiced, as its --config sets it up, accepts connections
on its snapshotter socket and answers /healthz; with --containerd-config,
also until containerd answers on the socket that config names and has
loaded the snapshotter "sluice". scripts/install-node.sh and the systemd
unit (ExecStartPost) use it, so that containerd starts once sluiced
answers.

Exit status: 0 ready; 2 sluiced did not answer within --timeout; 3
containerd answers without the snapshotter sluice (restart it so that it
reads its config); 4 containerd did not answer; 1 anything else.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := nodeconfig.WaitSluiced(ctx, cfg.Address, cfg.MetricsAddress); err != nil {
				return exitError{code: 2, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sluiced answers on %s\n", cfg.Address)
			if containerdConfig == "" {
				return nil
			}
			src, err := os.ReadFile(containerdConfig)
			if err != nil {
				return fmt.Errorf("containerd config: %w", err)
			}
			addr, err := nodeconfig.ContainerdAddress(src)
			if err != nil {
				return fmt.Errorf("containerd config %s: %w", containerdConfig, err)
			}
			if err := nodeconfig.WaitContainerd(ctx, addr); errors.Is(err, nodeconfig.ErrNoSnapshotter) {
				return exitError{code: 3, err: err}
			} else if err != nil {
				return exitError{code: 4, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "containerd answers on %s with the snapshotter %s\n", addr, nodeconfig.Plugin)
			return nil
		},
	}
	cmd.Flags().StringVar(&containerdConfig, "containerd-config", "", "also wait for the containerd this config sets up")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "give up after this long")
	return cmd
}
