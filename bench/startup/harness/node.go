package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testenv"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// node is one cold machine: containerd and, in the lazy modes, sluiced,
// with all their state (content store, snapshots, chunk cache) new under
// dir.
type node struct {
	dir        string
	containerd *testenv.Containerd
	agent      *agent // nil in Full mode
	cri        *criClient
}

// startNode starts sluiced (unless mode is Full), then containerd with its
// CRI plugin pulling from registry, and imports the sandbox image.
func startNode(ctx context.Context, b *bench, dir string, mode Mode, version testenv.ContainerdVersion, registry string) (_ *node, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	n := &node{dir: dir}
	defer func() {
		if err != nil {
			n.close(ctx)
		}
	}()
	cfg := testenv.ContainerdConfig{
		Dir:          filepath.Join(dir, "containerd"),
		Version:      version,
		Snapshotter:  "overlayfs",
		SandboxImage: sandboxRef,
		Registries:   []string{registry},
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if mode != Full {
		extra := ""
		if mode == NoBackground {
			extra = NoBackgroundConfig
		}
		if n.agent, err = startAgent(ctx, b.cfg.Binaries.Sluiced, filepath.Join(dir, "sluiced"), registry, b.cfg.AgentFields, extra); err != nil {
			return nil, err
		}
		cfg.Snapshotter, cfg.ProxySocket = "sluice", n.agent.socket
	}
	if n.containerd, err = testenv.StartContainerd(ctx, cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", version, err)
	}
	if err := n.containerd.Import(ctx, "k8s.io", cfg.Snapshotter, b.sandbox); err != nil {
		return nil, fmt.Errorf("importing the sandbox image: %w", err)
	}
	if n.cri, err = dialCRI(n.containerd.Address); err != nil {
		return nil, err
	}
	return n, nil
}

// close removes the pods (which stops their containers), stops containerd,
// the shims it left and sluiced, sweeps what is left below the node's dir
// (sluiced keeps image mounts when it exits) and removes it.
func (n *node) close(ctx context.Context) error {
	log := zerolog.Ctx(ctx)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	if n.cri != nil {
		n.cri.removePods(ctx)
		n.cri.close()
	}
	if n.containerd != nil {
		n.containerd.Stop()
		for _, pid := range n.containerd.Shims() {
			log.Warn().Int("pid", pid).Msg("killing a shim containerd left")
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.agent != nil {
		n.agent.stop()
	}
	found, err := leakcheck.Sweep(n.dir)
	if !found.Empty() {
		log.Debug().Str("dir", n.dir).Stringer("swept", found).Msg("swept after the node stopped")
	}
	if err != nil {
		return fmt.Errorf("cleaning node %s up: %w", n.dir, err)
	}
	return os.RemoveAll(n.dir)
}

// logTails returns the ends of the node's daemon logs, for an error.
func (n *node) logTails() string {
	var b strings.Builder
	if n.containerd != nil {
		fmt.Fprintf(&b, "containerd log (end):\n%s\n", n.containerd.LogTail(20))
	}
	if n.agent != nil {
		fmt.Fprintf(&b, "sluiced log (end):\n%s\n", testenv.LogTail(n.agent.logPath, 20))
	}
	return b.String()
}

// agent is a running sluiced.
type agent struct {
	proc        *testenv.Proc
	config      string
	configText  string
	logPath     string
	socket      string
	metricsAddr string
}

// AgentConfig is the sluiced config every lazy node runs (a format: the
// node's state dir, the registry's host:port, the metrics host:port): the paths
// of a private node, the plain-HTTP registry, and no hosts.toml dir, so
// that the machine's /etc/containerd/certs.d is not read; every other
// field keeps its default (cmd/sluiced/config.sample.toml), background
// fetch included.
const AgentConfig = `root = "%[1]s/root"
address = "%[1]s/snapshotter.sock"
nbd_socket = "%[1]s/nbd.sock"
metrics_address = "%[3]s"
plain_http = ["%[2]s"]

[cache]
dir = "%[1]s/cache"

[registry]
config_path = ""
`

// NoBackgroundConfig is what mode NoBackground adds to AgentConfig's
// [cache] table.
const NoBackgroundConfig = `background_rate = "0"
`

// startAgent writes sluiced's config (fields, then AgentConfig with
// cacheExtra added to its [cache] table) and starts it; it waits for its
// snapshotter socket and /healthz.
func startAgent(ctx context.Context, bin, dir, registry, fields, cacheExtra string) (*agent, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	a := &agent{
		config:      filepath.Join(dir, "config.toml"),
		configText:  fields + strings.Replace(fmt.Sprintf(AgentConfig, dir, registry, fmt.Sprintf("127.0.0.1:%d", port)), "[cache]\n", "[cache]\n"+cacheExtra, 1),
		logPath:     filepath.Join(dir, "sluiced.log"),
		socket:      filepath.Join(dir, "snapshotter.sock"),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", port),
	}
	if err := os.WriteFile(a.config, []byte(a.configText), 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.Create(a.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", a.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if a.proc, err = testenv.StartProc(cmd); err != nil {
		return nil, fmt.Errorf("sluiced: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(a.socket); err == nil && a.healthy(ctx) {
			return a, nil
		}
		select {
		case <-a.proc.Done():
			return nil, fmt.Errorf("sluiced exited during startup: %s", testenv.LogTail(a.logPath, 30))
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("sluiced not ready within 60 s: %s", testenv.LogTail(a.logPath, 30))
		}
	}
}

func (a *agent) healthy(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.metricsAddr+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (a *agent) stop() { a.proc.Stop(30 * time.Second) }

func (a *agent) metrics(ctx context.Context) (metrics, error) { return scrape(ctx, a.metricsAddr) }

// errBackgroundTimeout: sluiced's background fetch did not finish in time.
var errBackgroundTimeout = errors.New("background fetch did not finish in time")

// waitComplete waits until every image sluiced serves is complete locally
// (sluice_image_percent_complete at 100), polling every 100 ms.
func (a *agent) waitComplete(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		m, err := a.metrics(ctx)
		if err != nil {
			return err
		}
		pct := m.all("sluice_image_percent_complete")
		if len(pct) > 0 && allAtLeast(pct, 100) {
			return nil
		}
		if len(pct) == 0 && m.sum("sluice_image_mounts") == 0 && m.sum("sluice_fallbacks_total") > 0 {
			return nil // nothing streamed: pulled the ordinary way, complete
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (%s)", errBackgroundTimeout, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func allAtLeast(vs []float64, min float64) bool {
	for _, v := range vs {
		if v < min {
			return false
		}
	}
	return true
}
