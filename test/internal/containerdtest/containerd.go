// Package containerdtest runs a private containerd for end-to-end tests:
// Debian's containerd 1.6 (config version 2) or containerd 2.x built by
// scripts/install-deps.sh (config version 3), both with Debian's runc. Its
// root, state, sockets, runc state and the CRI plugin's stream server are
// the test's own, so it neither sees nor disturbs another containerd on the
// machine. The CRI plugin is set up as on a node running sluiced: a
// configurable snapshotter (a proxy plugin or a built-in one), snapshot
// annotations passed to the snapshotter, host-network pods without CNI, a
// local sandbox image, and plain HTTP for local registries. Each version
// gets the configuration its users would write: 1.6 pulls in the CRI plugin
// (disable_snapshot_annotations = false, registry mirrors); 2.x pulls
// through its transfer service (the default since 2.1), which passes the
// annotations to a proxy snapshotter that exports
// enable_remote_snapshot_annotations and finds registries in hosts.toml
// files (registry config_path).
package containerdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-project/sluice/test/internal/proc"
)

// Version is a containerd release line the harness can run.
type Version int

const (
	// V1 is Debian's containerd 1.6 (binaries containerd, ctr and
	// containerd-shim-runc-v2 in PATH), configured with config version 2.
	V1 Version = iota
	// V2 is containerd 2.x, installed by scripts/install-deps.sh into the
	// tools directory's containerd2/ (see Dir2), configured with config
	// version 3.
	V2
)

// Versions are all the versions, oldest first.
var Versions = []Version{V1, V2}

func (v Version) String() string {
	if v == V2 {
		return "containerd2"
	}
	return "containerd1.6"
}

// Config says how to run containerd.
type Config struct {
	// Dir holds everything of this containerd: config, root, state,
	// sockets, log. It must exist.
	Dir string
	// Version is the containerd to run (V1, the zero value, or V2).
	Version Version
	// ConfigVersion is the version of the config file written: 0 for
	// the version's own (2 for V1, 3 for V2), or 2 to run 2.x on 1.6's
	// config (migrated at start, as on a node upgraded without touching
	// its config; its CRI plugin then pulls with its own client, as 1.6
	// does, because of disable_snapshot_annotations = false).
	ConfigVersion int
	// Snapshotter is the CRI plugin's snapshotter: "overlayfs", or the name
	// of the proxy plugin ProxySocket serves.
	Snapshotter string
	// ProxySocket, if set, is the gRPC socket of a proxy snapshotter named
	// Snapshotter. Start the snapshotter first: containerd dials it once
	// and backs off for seconds on failure.
	ProxySocket string
	// SandboxImage is the CRI plugin's sandbox (pause) image; it must be
	// in the k8s.io namespace before a pod starts (see Import).
	SandboxImage string
	// Registries (host:port) are reached over plain HTTP by CRI pulls.
	Registries []string
}

// Containerd is a running containerd.
type Containerd struct {
	// Address is its gRPC socket.
	Address string
	cfg     Config
	bin     binaries
	proc    *proc.Proc
	log     string
}

// Binary is containerd's command (Debian's containerd package).
const Binary = "containerd"

// binaries are the paths of one version's commands.
type binaries struct {
	containerd, ctr, shim string
}

// find returns the paths of v's commands, or an error naming the missing
// one and how to install it.
func (v Version) find() (binaries, error) {
	if v == V2 {
		dir, err := Dir2()
		if err != nil {
			return binaries{}, err
		}
		return binaries{filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr"), filepath.Join(dir, "containerd-shim-runc-v2")}, nil
	}
	var paths []string
	for _, name := range []string{Binary, "ctr", "containerd-shim-runc-v2"} {
		p, err := exec.LookPath(name)
		if err != nil {
			return binaries{}, fmt.Errorf("%w (Debian's containerd package; scripts/install-deps.sh installs it)", err)
		}
		paths = append(paths, p)
	}
	return binaries{paths[0], paths[1], paths[2]}, nil
}

// check returns an error unless the output of `ctr version` shows a
// server of version v.
func (v Version) check(ctrVersion string) error {
	_, server, _ := strings.Cut(ctrVersion, "Server:")
	for _, line := range strings.Split(server, "\n") {
		k, val, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k != "Version" {
			continue
		}
		val = strings.TrimPrefix(strings.TrimSpace(val), "v")
		want := map[Version]string{V1: "1.", V2: "2."}[v]
		if !strings.HasPrefix(val, want) {
			return fmt.Errorf("%s answers as containerd %s", v, val)
		}
		return nil
	}
	return fmt.Errorf("no server version in ctr version's output:\n%s", ctrVersion)
}

// Available returns nil if v's commands (and runc) are installed, else an
// error saying which is missing and how to install it.
func (v Version) Available() error {
	if _, err := v.find(); err != nil {
		return err
	}
	_, err := exec.LookPath("runc")
	return err
}

// Dir2 returns the directory of containerd 2.x's containerd, ctr and
// containerd-shim-runc-v2: containerd2/ in the tools directory (see
// ToolsDir), where scripts/install-deps.sh installs them.
func Dir2() (string, error) {
	tools, err := ToolsDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(tools, "containerd2")
	for _, bin := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("containerd 2.x not installed (scripts/install-deps.sh installs it into %s): %w", dir, err)
		}
	}
	return dir, nil
}

// ToolsDir returns where scripts/install-deps.sh installs Go tools:
// $SLUICE_TOOLS_BIN (the Makefile sets it), else bin/tools in the module's
// root (found from the working directory, as under go test).
func ToolsDir() (string, error) {
	if dir := os.Getenv("SLUICE_TOOLS_BIN"); dir != "" {
		return dir, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin", "tools"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("neither $SLUICE_TOOLS_BIN set nor go.mod found above the working directory")
		}
		dir = parent
	}
}

// Start writes the config and runs containerd, and waits until it answers.
func Start(ctx context.Context, cfg Config) (*Containerd, error) {
	c, config, err := prepare(cfg)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(cfg.Dir, "containerd.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(c.bin.containerd, "--config", cfgPath)
	// containerd finds the shim of runtime io.containerd.runc.v2 by PATH:
	// its own version's shim first (Debian's 1.6 shim is in /usr/bin).
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(c.bin.shim)+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a ^C meant for go test reaches it through
	// the test's cleanup, in order, not all at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.proc, err = proc.Start(cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		// Ready when ctr can talk to it (the socket alone appears early).
		if out, err := c.Ctr(ctx, "default", "version"); err == nil && bytes.Contains(out, []byte("Server:")) {
			if err := cfg.Version.check(string(out)); err != nil {
				c.Stop()
				return nil, err
			}
			return c, nil
		}
		select {
		case <-c.proc.Done():
			return nil, fmt.Errorf("containerd exited during startup: %s", c.LogTail(30))
		case <-ctx.Done():
			c.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("containerd did not answer on %s within 60 s: %s", c.Address, c.LogTail(30))
		}
	}
}

// ConfigFile returns the config Start writes for cfg (and writes the
// hosts.toml files of a version 3 config), for tests that start
// containerd another way, such as scripts/install-node.sh.
func ConfigFile(cfg Config) (string, error) {
	_, config, err := prepare(cfg)
	return config, err
}

// Attach returns a Containerd for one started another way on cfg's config
// (see ConfigFile): for its Address, Ctr, Crictl, Import and Shims. Stop
// and Running do nothing for it, and its log is not kept.
func Attach(cfg Config) (*Containerd, error) {
	c, _, err := prepare(cfg)
	return c, err
}

// prepare checks cfg, fills its defaults in and returns the Containerd it
// describes (not started) and its config.
func prepare(cfg Config) (*Containerd, string, error) {
	bin, err := cfg.Version.find()
	if err != nil {
		return nil, "", err
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, "", err
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	c := &Containerd{
		Address: filepath.Join(cfg.Dir, "containerd.sock"),
		cfg:     cfg,
		bin:     bin,
		log:     filepath.Join(cfg.Dir, "containerd.log"),
	}
	switch {
	case cfg.ConfigVersion == 3 && cfg.Version == V1:
		return nil, "", errors.New("containerd 1.6 does not read config version 3")
	case cfg.ConfigVersion != 0 && cfg.ConfigVersion != 2 && cfg.ConfigVersion != 3:
		return nil, "", fmt.Errorf("config version %d: only 2 and 3 are written", cfg.ConfigVersion)
	}
	config := c.config()
	if cfg.Version == V2 && cfg.ConfigVersion != 2 {
		config = c.config3()
		if err := c.writeHosts(); err != nil {
			return nil, "", err
		}
	}
	return c, config, nil
}

// config returns containerd 1.6's config (version 2).
func (c *Containerd) config() string {
	d := c.cfg.Dir
	level := "info"
	if c.cfg.Version == V2 {
		// 2.x's CRI logs which way it pulls (client or transfer service)
		level = "debug"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `version = 2
root = %q
state = %q
# Not shared with the host's containerd, nor with other tests'.
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = %q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), c.Address, c.Address+".ttrpc", level)
	if c.cfg.ProxySocket != "" {
		fmt.Fprintf(&b, `
[proxy_plugins.%s]
  type = "snapshot"
  address = %q
`, c.cfg.Snapshotter, c.cfg.ProxySocket)
	}
	fmt.Fprintf(&b, `
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # root lacks CAP_SYS_RESOURCE in this kind of VM
  restrict_oom_score_adj = true
  # a free port, not the default 10010 another containerd may hold
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
    # pass containerd.io/snapshot/cri.* labels to the snapshotter
    disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %q
`, filepath.Join(d, "opt"), c.cfg.SandboxImage, c.cfg.Snapshotter, filepath.Join(d, "runc"))
	for _, r := range c.cfg.Registries {
		fmt.Fprintf(&b, `  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
    endpoint = ["http://%s"]
`, r, r)
	}
	return b.String()
}

// config3 returns containerd 2.x's config (version 3). The CRI plugin
// pulls through the transfer service: it needs an unpack_config entry for
// the snapshotter (the default one names only overlayfs) and passes the
// containerd.io/snapshot/cri.* labels only to a snapshotter exporting
// enable_remote_snapshot_annotations; disable_snapshot_annotations = false
// or registry mirrors would make CRI fall back to its own pull instead.
func (c *Containerd) config3() string {
	d := c.cfg.Dir
	var b strings.Builder
	fmt.Fprintf(&b, `version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  # CRI logs which way it pulls (client or transfer service) at debug
  level = "debug"
`, filepath.Join(d, "root"), filepath.Join(d, "state"), c.Address, c.Address+".ttrpc")
	if c.cfg.ProxySocket != "" {
		fmt.Fprintf(&b, `
[proxy_plugins.%s]
  type = "snapshot"
  address = %q
  [proxy_plugins.%s.exports]
    # the transfer service adds the containerd.io/snapshot/cri.* labels
    enable_remote_snapshot_annotations = "true"
`, c.cfg.Snapshotter, c.cfg.ProxySocket, c.cfg.Snapshotter)
	}
	fmt.Fprintf(&b, `
[plugins]
  # NRI's socket is machine-wide (/var/run/nri/nri.sock); no test uses it
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.transfer.v1.local']
    [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
      platform = "%s/%s"
      snapshotter = %q
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = %q
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = %q
  [plugins.'io.containerd.cri.v1.runtime']
    # root lacks CAP_SYS_RESOURCE in this kind of VM
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        Root = %q
  [plugins.'io.containerd.grpc.v1.cri']
    # a free port, not the default 10010 another containerd may hold
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
`, runtime.GOOS, runtime.GOARCH, c.cfg.Snapshotter, c.cfg.Snapshotter, c.cfg.SandboxImage,
		c.hostsDir(), filepath.Join(d, "runc"))
	return b.String()
}

// hostsDir is the registry config_path of containerd 2.x: one
// HOST/hosts.toml per registry.
func (c *Containerd) hostsDir() string { return filepath.Join(c.cfg.Dir, "certs.d") }

// writeHosts writes a hosts.toml for each registry, reached over plain
// HTTP.
func (c *Containerd) writeHosts() error {
	for _, r := range c.cfg.Registries {
		dir := filepath.Join(c.hostsDir(), r)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		hosts := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", r, r)
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Version returns the containerd version this is.
func (c *Containerd) Version() Version { return c.cfg.Version }

// Stop asks containerd to exit (SIGTERM, by PID) and waits for it. Shims
// of containers still running outlive it: remove them first, or kill
// Shims().
func (c *Containerd) Stop() {
	if c.proc != nil {
		c.proc.Stop(20 * time.Second)
	}
}

// Running reports whether the containerd process is alive.
func (c *Containerd) Running() bool { return c.proc != nil && c.proc.Running() }

// LogTail returns the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string { return proc.LogTail(c.log, n) }

// Log returns containerd's whole log.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// Ctr runs ctr against this containerd in namespace ns and returns its
// standard output; the error includes its standard error.
func (c *Containerd) Ctr(ctx context.Context, ns string, args ...string) ([]byte, error) {
	return run(ctx, c.bin.ctr, append([]string{"--address", c.Address, "--namespace", ns}, args...)...)
}

// Crictl runs crictl against this containerd's CRI plugin and returns its
// standard output; the error includes its standard error.
func (c *Containerd) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	return c.CrictlVia(ctx, c.Address, args...)
}

// CrictlVia is Crictl with the image service at the unix socket
// imageService instead (kubelet's --image-service-endpoint), such as a
// proxy in front of containerd's.
func (c *Containerd) CrictlVia(ctx context.Context, imageService string, args ...string) ([]byte, error) {
	bin, err := CrictlPath()
	if err != nil {
		return nil, err
	}
	ep := "unix://" + c.Address
	conf := filepath.Join(c.cfg.Dir, "crictl.yaml")
	if _, err := os.Stat(conf); err != nil {
		// An empty config of its own, so that /etc/crictl.yaml is not read.
		if err := os.WriteFile(conf, nil, 0o644); err != nil {
			return nil, err
		}
	}
	return run(ctx, bin, append([]string{"--config", conf, "--runtime-endpoint", ep, "--image-endpoint", "unix://" + imageService, "--timeout", "2m"}, args...)...)
}

// CrictlPath finds crictl: in the tools directory (see ToolsDir), where
// scripts/install-deps.sh installs it, else in PATH.
func CrictlPath() (string, error) {
	if dir, err := ToolsDir(); err == nil {
		p := filepath.Join(dir, "crictl")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("crictl")
	if err != nil {
		return "", fmt.Errorf("crictl not in $SLUICE_TOOLS_BIN nor PATH (scripts/install-deps.sh installs it into bin/tools): %w", err)
	}
	return p, nil
}

// Import loads an image archive (docker save or OCI format) into namespace
// ns and unpacks it into snapshotter.
func (c *Containerd) Import(ctx context.Context, ns, snapshotter, archive string) error {
	args := []string{"images", "import", "--snapshotter", snapshotter}
	if c.cfg.Version == V2 && c.cfg.ConfigVersion == 2 {
		// 2.x's ctr imports through the transfer service, whose default
		// unpack_config names only overlayfs: "unable to initialize
		// unpacker: no unpack platforms defined". --local imports in ctr.
		args = append(args, "--local")
	}
	_, err := c.Ctr(ctx, ns, append(args, archive)...)
	return err
}

// Shims returns the PIDs of the shims this containerd started (those
// whose command line names its address; both versions' shims take
// -address).
func (c *Containerd) Shims() []int {
	return findProcs(func(args []string) bool {
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
			return false
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == c.Address {
				return true
			}
		}
		return false
	})
}

// findProcs returns the PIDs of the processes whose argv match.
func findProcs(match func(args []string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// run runs a command with a bound on its time and returns its standard
// output; the error includes its standard error (and standard output).
func run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := bytes.TrimSpace(append(stderr.Bytes(), stdout.Bytes()...))
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}
