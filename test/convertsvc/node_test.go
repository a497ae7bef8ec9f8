package convertsvc

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// node is sluiced and a containerd (1.6, CRI set up as on a node) with
// their state under dir: pulls go through CRI, as kubelet's do. Nodes
// trust the service's key only (trust.policy = "signed").
type node struct {
	t          *testing.T
	dir        string
	agent      *proc.Proc
	agentLog   string
	metrics    string // host:port of sluiced's /metrics
	containerd *containerdtest.Containerd
}

// newNode starts sluiced, asking convertService (if not "") to convert
// images without an artifact, then containerd. registries are reached
// over plain HTTP.
func newNode(t *testing.T, e *env, convertService string, registries ...string) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-convertsvc-node-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, dir: dir, agentLog: filepath.Join(dir, "sluiced.log")}
	t.Cleanup(n.teardown)
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	n.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	socket := filepath.Join(dir, "snapshotter.sock")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "root = %q\naddress = %q\nnbd_socket = %q\nmetrics_address = %q\n",
		filepath.Join(dir, "root"), socket, filepath.Join(dir, "nbd.sock"), n.metrics)
	fmt.Fprintf(&cfg, "log_level = \"debug\"\nattacher = \"portable\"\nplain_http = [%s]\n", quoteAll(registries))
	cfg.WriteString("stream_min_size = \"0\"\n") // the test images are a few KiB: stream them
	if convertService != "" {
		fmt.Fprintf(&cfg, "convert_service = %q\n", convertService)
	}
	fmt.Fprintf(&cfg, "\n[cache]\ndir = %q\nsize = \"1GiB\"\n", filepath.Join(dir, "cache"))
	fmt.Fprintf(&cfg, "\n[trust]\npolicy = \"signed\"\nkeys = [%q]\n", e.pub)
	config := filepath.Join(dir, "sluiced.toml")
	if err := os.WriteFile(config, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.startAgent(e.sluiced, config, socket); err != nil {
		t.Fatal(err)
	}
	ccfg := containerdtest.Config{
		Dir:          filepath.Join(dir, "containerd"),
		Snapshotter:  "sluice",
		ProxySocket:  socket,
		SandboxImage: "sluice.test/pause:v1",
		Registries:   registries,
	}
	if err := os.MkdirAll(ccfg.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if n.containerd, err = containerdtest.Start(context.Background(), ccfg); err != nil {
		t.Fatal(err)
	}
	return n
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// startAgent runs sluiced and waits for its socket and /healthz.
func (n *node) startAgent(bin, config, socket string) error {
	logFile, err := os.OpenFile(n.agentLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if n.agent, err = proc.Start(cmd); err != nil {
		return err
	}
	return waitFor(60*time.Second, func() bool {
		if _, err := os.Stat(socket); err != nil {
			return false
		}
		resp, err := http.Get("http://" + n.metrics + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// teardown stops containerd and sluiced (by PID) and sweeps the mounts,
// loop devices and processes left below the node's dir.
func (n *node) teardown() {
	t := n.t
	if n.containerd != nil {
		n.containerd.Stop()
		if t.Failed() {
			t.Logf("containerd log (end):\n%s", n.containerd.LogTail(30))
		}
	}
	if n.agent != nil {
		if !n.agent.Stop(30 * time.Second) {
			t.Errorf("sluiced did not exit within 30 s of SIGTERM")
		}
		log := n.log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("sluiced reported a data race:\n%s", log)
		}
		if t.Failed() {
			t.Logf("sluiced log (end):\n%s", proc.LogTail(n.agentLog, 40))
		}
	}
	found, err := leakcheck.Sweep(n.dir)
	if !found.Empty() {
		t.Logf("swept after the node stopped:\n%s", found)
	}
	if err != nil {
		t.Errorf("cleaning the node up: %v", err)
		return
	}
	if err := os.RemoveAll(n.dir); err != nil {
		t.Errorf("removing %s: %v", n.dir, err)
	}
}

func (n *node) log() string {
	b, _ := os.ReadFile(n.agentLog)
	return string(b)
}

// pull pulls image through CRI, failing the test on error; it retries
// while containerd cannot reach sluiced yet (kubelet retries likewise).
func (n *node) pull(image string) {
	n.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := n.containerd.Crictl(context.Background(), "pull", image)
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "code = Unavailable") || time.Now().After(deadline) {
			n.t.Fatalf("crictl pull %s: %v", image, err)
		}
		time.Sleep(time.Second)
	}
}

// metric returns the sum of sluiced's samples of name over their labels.
func (n *node) metric(name string) float64 {
	n.t.Helper()
	m, err := scrape("http://" + n.metrics + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	var total float64
	found := false
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			total += v
			found = true
		}
	}
	if !found {
		n.t.Fatalf("sluiced's /metrics has no %s", name)
	}
	return total
}

// sample returns one sample of sluiced's metrics (0 if absent).
func (n *node) sample(key string) float64 {
	n.t.Helper()
	m, err := scrape("http://" + n.metrics + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	return m[key]
}
