package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/internal/promtext"
	"github.com/sluice-project/sluice/test/testutil"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// nodeOpts says how to set a node up.
type nodeOpts struct {
	// containerd is the containerd version to run (1.6 by default).
	containerd containerdtest.Version
	// configVersion is containerd's config version; 0 is the version's
	// own (see containerdtest.Config).
	configVersion int
	// snapshotter is "sluice" (sluiced as a proxy plugin, the default) or
	// a built-in one such as "overlayfs" (no sluiced at all).
	snapshotter string
	// policy is sluiced's policy; "" keeps its default.
	policy string
	// registries are more registries (host:port) than the shared one,
	// reached over plain HTTP by CRI and sluiced.
	registries []string
	// noSandbox skips importing the sandbox image, for tests that run no
	// pod.
	noSandbox bool
	// trustKeys, if any, are the public key files of trust.policy =
	// "signed".
	trustKeys []string
	// criKeychain serves sluiced's CRI image service proxy (in front of
	// this node's containerd) at agentProc.criSocket.
	criKeychain bool
	// backgroundRate is sluiced's cache.background_rate; "" keeps its
	// default.
	backgroundRate string
	// hostsDir is sluiced's registry.config_path (hosts.toml files); ""
	// turns it off, so that no node reads the machine's
	// /etc/containerd/certs.d.
	hostsDir string
	// streamMinSize is sluiced's stream_min_size: "" writes "0" (the test
	// images are a few KiB, and streaming them is what most tests test);
	// "default" keeps sluiced's default.
	streamMinSize string
}

// node is one machine's worth of daemons: sluiced and containerd, with all
// their state under dir.
type node struct {
	t          *testing.T
	e          *env
	dir        string
	opts       nodeOpts
	agent      *agentProc // nil without sluiced
	containerd *containerdtest.Containerd
	pods       int
}

// newNode starts sluiced (unless opts.snapshotter is a built-in one), then
// containerd, and imports the sandbox image. Its cleanup tears it all down
// and sweeps what is left below its dir.
func newNode(t *testing.T, e *env, opts nodeOpts) *node {
	t.Helper()
	if opts.snapshotter == "" {
		opts.snapshotter = "sluice"
	}
	dir, err := os.MkdirTemp("", "sluice-node-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, e: e, dir: dir, opts: opts}
	t.Cleanup(n.teardown)
	ctx := context.Background()
	cfg := containerdtest.Config{
		Dir:           filepath.Join(dir, "containerd"),
		Version:       opts.containerd,
		ConfigVersion: opts.configVersion,
		Snapshotter:   opts.snapshotter,
		SandboxImage:  sandboxRef,
		Registries:    append([]string{e.registry.Addr}, opts.registries...),
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if opts.snapshotter == "sluice" {
		n.agent = n.startAgent(opts.policy)
		cfg.ProxySocket = n.agent.socket
	}
	if n.containerd, err = containerdtest.Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !opts.noSandbox {
		if err := n.containerd.Import(ctx, "k8s.io", opts.snapshotter, e.sandbox); err != nil {
			t.Fatalf("importing the sandbox image: %v", err)
		}
	}
	return n
}

// forEachContainerd runs f as a subtest against each containerd version
// the harness knows (Debian's 1.6, and 2.x from scripts/install-deps.sh),
// named after it; a version that is not installed fails its subtest,
// saying how to install it.
func forEachContainerd(t *testing.T, f func(t *testing.T, ctrd containerdtest.Version)) {
	for _, v := range containerdtest.Versions {
		t.Run(v.String(), func(t *testing.T) {
			testutil.Require(t, testutil.Check(v.String(), v.Available))
			f(t, v)
		})
	}
}

// teardown removes pods and containers (CRI's and ctr's), stops containerd,
// its shims and sluiced, and sweeps (and logs) what is left below the
// node's dir.
func (n *node) teardown() {
	t := n.t
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if n.containerd != nil && n.containerd.Running() {
		_, _ = n.containerd.Crictl(ctx, "rmp", "-fa")
		for _, ns := range []string{"default", "k8s.io"} {
			if out, err := n.containerd.Ctr(ctx, ns, "tasks", "ls", "-q"); err == nil {
				for _, id := range strings.Fields(string(out)) {
					_, _ = n.containerd.Ctr(ctx, ns, "tasks", "kill", "-s", "SIGKILL", id)
					time.Sleep(200 * time.Millisecond)
					_, _ = n.containerd.Ctr(ctx, ns, "tasks", "rm", "-f", id)
				}
			}
		}
		n.containerd.Stop()
	}
	if n.containerd != nil {
		for _, pid := range n.containerd.Shims() {
			t.Logf("killing shim %d left by containerd", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.agent != nil {
		n.agent.stop(t)
		if t.Failed() {
			t.Logf("sluiced log (end):\n%s", n.agent.logTail(60))
		}
	}
	if n.containerd != nil && t.Failed() {
		t.Logf("containerd log (end):\n%s", n.containerd.LogTail(40))
	}
	// sluiced keeps devices and image mounts when it exits (so that
	// running containers keep their root filesystems): sweep them.
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

// crictl runs crictl and fails the test on error.
func (n *node) crictl(args ...string) string {
	n.t.Helper()
	out, err := n.containerd.Crictl(context.Background(), args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// ctr runs ctr in namespace ns and fails the test on error.
func (n *node) ctr(ns string, args ...string) string {
	n.t.Helper()
	out, err := n.containerd.Ctr(context.Background(), ns, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// runPod starts a host-network pod sandbox and returns its ID and config.
func (n *node) runPod(name string) (id, config string) {
	n.t.Helper()
	n.pods++
	pod := map[string]any{
		"metadata": map[string]any{"name": name, "namespace": "sluice-e2e", "uid": fmt.Sprintf("uid-%s-%d", name, n.pods), "attempt": 0},
		"linux": map[string]any{"security_context": map[string]any{
			"namespace_options": map[string]any{"network": 2}, // NODE: no CNI here
		}},
		"log_directory": filepath.Join(n.dir, "logs", fmt.Sprintf("%s-%d", name, n.pods)),
	}
	config = n.writeJSON(fmt.Sprintf("pod-%s-%d.json", name, n.pods), pod)
	return n.crictl("runp", config), config
}

// createContainer creates (not starts) a container of image in pod.
func (n *node) createContainer(pod, podConfig, name, image string, command ...string) string {
	n.t.Helper()
	return n.crictlRetry("create", pod, n.containerJSON(name, image, command...), podConfig)
}

// crictlRetry is crictl that retries for up to a minute while containerd
// reports the snapshotter Unavailable: after sluiced restarts, containerd's
// gRPC client to the proxy snapshotter is in reconnect backoff for a few
// seconds (kubelet retries likewise). containerd says so in two ways: the
// dial error naming the socket, or, when it reconnects while sluiced is
// still starting, "timed out waiting for server handshake" (CI saw it once
// in TestRelayDied).
func (n *node) crictlRetry(args ...string) string {
	n.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := n.containerd.Crictl(context.Background(), args...)
		if err == nil {
			return strings.TrimSpace(string(out))
		}
		msg := err.Error()
		reconnecting := strings.Contains(msg, "snapshotter.sock") || strings.Contains(msg, "waiting for server handshake")
		if !strings.Contains(msg, "code = Unavailable") || !reconnecting || time.Now().After(deadline) {
			n.t.Fatal(err)
		}
		n.t.Logf("containerd does not reach sluiced yet; retrying: %v", err)
		time.Sleep(time.Second)
	}
}

// containerJSON writes a container config for crictl create.
func (n *node) containerJSON(name, image string, command ...string) string {
	n.t.Helper()
	c := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	}
	return n.writeJSON(fmt.Sprintf("ctr-%s-%d.json", name, time.Now().UnixNano()), c)
}

// runToExit creates and starts a container, waits for it to exit and
// returns its output; a non-zero exit fails the test.
func (n *node) runToExit(pod, podConfig, name, image string, command ...string) string {
	n.t.Helper()
	id := n.createContainer(pod, podConfig, name, image, command...)
	n.crictl("start", id)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		state := n.crictl("inspect", "-o", "go-template", "--template", "{{.status.state}} {{.status.exitCode}}", id)
		if strings.HasPrefix(state, "CONTAINER_EXITED") {
			logs := n.crictl("logs", id)
			if state != "CONTAINER_EXITED 0" {
				n.t.Fatalf("container %s of %s: %s; its output:\n%s", name, image, state, tail(logs, 20))
			}
			return logs
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("container %s of %s still %s after 3 min", name, image, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// listRootfs runs listScript in a new container of image in pod and
// returns the listing.
func (n *node) listRootfs(pod, podConfig, name, image string) listing {
	n.t.Helper()
	out := n.runToExit(pod, podConfig, name, image, "/bin/sh", "-c", listScript)
	l, err := parseListing(out)
	if err != nil {
		n.t.Fatalf("container %s of %s: %v", name, image, err)
	}
	return l
}

// checkRootfs lists image's root filesystem in a new container and
// compares it with the image's reference.
func (n *node) checkRootfs(pod, podConfig, name string, ti *testImage) {
	n.t.Helper()
	got := n.listRootfs(pod, podConfig, name, ti.ref)
	if d := ti.listing.diff(got, 30); len(d) > 0 {
		n.t.Errorf("container %s of %s: root filesystem differs from the reference (%d entries vs %d):\n%s",
			name, ti.ref, len(got), len(ti.listing), strings.Join(d, "\n"))
	}
}

func (n *node) writeJSON(file string, v any) string {
	n.t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		n.t.Fatal(err)
	}
	p := filepath.Join(n.dir, file)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// pull pulls through CRI, failing the test on error.
func (n *node) pull(image string) {
	n.t.Helper()
	n.crictlRetry("pull", image)
}

// agentProc is a running sluiced.
type agentProc struct {
	proc        *proc.Proc // nil until started
	config      string
	logPath     string
	socket      string // snapshotter gRPC
	nbd         string // NBD exports
	criSocket   string // the CRI image service proxy, with nodeOpts.criKeychain
	root        string
	metricsAddr string // host:port
}

// agentConfig writes sluiced's config for this node and returns its path.
func (n *node) agentConfig(policy string) (*agentProc, error) {
	d := filepath.Join(n.dir, "sluiced")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	a := &agentProc{
		config:      filepath.Join(d, "config.toml"),
		logPath:     filepath.Join(d, "sluiced.log"),
		socket:      filepath.Join(d, "snapshotter.sock"),
		nbd:         filepath.Join(d, "nbd.sock"),
		root:        filepath.Join(d, "root"),
		metricsAddr: fmt.Sprintf("127.0.0.1:%d", port),
	}
	var b strings.Builder
	fmt.Fprintf(&b, "root = %q\naddress = %q\nnbd_socket = %q\nmetrics_address = %q\n", a.root, a.socket, a.nbd, a.metricsAddr)
	plain := strings.Join(append([]string{strconv.Quote(n.e.registry.Addr)}, quoteAll(n.opts.registries)...), ", ")
	fmt.Fprintf(&b, "log_level = \"debug\"\nattacher = \"portable\"\nplain_http = [%s]\n", plain)
	if policy != "" {
		fmt.Fprintf(&b, "policy = %q\n", policy)
	}
	switch n.opts.streamMinSize {
	case "":
		b.WriteString("stream_min_size = \"0\"\n")
	case "default":
	default:
		fmt.Fprintf(&b, "stream_min_size = %q\n", n.opts.streamMinSize)
	}
	fmt.Fprintf(&b, "\n[cache]\ndir = %q\nsize = \"1GiB\"\n", filepath.Join(d, "cache"))
	if n.opts.backgroundRate != "" {
		fmt.Fprintf(&b, "background_rate = %q\n", n.opts.backgroundRate)
	}
	if n.opts.criKeychain {
		// containerd's socket: containerdtest.Start puts it in its Dir.
		a.criSocket = filepath.Join(d, "cri-image.sock")
		fmt.Fprintf(&b, "\n[cri_keychain]\nenable_keychain = true\naddress = %q\nimage_service_path = %q\n",
			a.criSocket, filepath.Join(n.dir, "containerd", "containerd.sock"))
	}
	fmt.Fprintf(&b, "\n[registry]\nconfig_path = %q\n", n.opts.hostsDir)
	if len(n.opts.trustKeys) > 0 {
		fmt.Fprintf(&b, "\n[trust]\npolicy = \"signed\"\nkeys = [%s]\n", strings.Join(quoteAll(n.opts.trustKeys), ", "))
	}
	if err := os.WriteFile(a.config, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return a, nil
}

// startAgent writes the config and starts sluiced.
func (n *node) startAgent(policy string) *agentProc {
	n.t.Helper()
	a, err := n.agentConfig(policy)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := a.start(n.e.sluiced); err != nil {
		n.t.Fatal(err)
	}
	return a
}

// start runs sluiced and waits for its socket and /healthz.
func (a *agentProc) start(bin string) error {
	logFile, err := os.OpenFile(a.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", a.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if a.proc, err = proc.Start(cmd); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(a.socket); err == nil {
			if resp, err := http.Get("http://" + a.metricsAddr + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-a.proc.Done():
			return fmt.Errorf("sluiced exited during startup (%v):\n%s", cmd.ProcessState, a.logTail(30))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sluiced not ready (socket %s, /healthz on %s) within 60 s:\n%s", a.socket, a.metricsAddr, a.logTail(30))
		}
	}
}

// stop sends SIGTERM (by PID) and waits; SIGKILL after 30 s fails the test.
// A data race in its log fails the test too.
func (a *agentProc) stop(t *testing.T) {
	if a.proc == nil {
		return
	}
	if !a.proc.Stop(30 * time.Second) {
		t.Errorf("sluiced did not exit within 30 s of SIGTERM")
	}
	if log, err := os.ReadFile(a.logPath); err == nil && strings.Contains(string(log), "WARNING: DATA RACE") {
		t.Errorf("sluiced reported a data race:\n%s", log)
	}
}

func (a *agentProc) logTail(lines int) string { return proc.LogTail(a.logPath, lines) }

func (a *agentProc) log() string {
	b, _ := os.ReadFile(a.logPath)
	return string(b)
}

// metrics fetches /metrics and returns each sample, "name{labels}" ->
// value.
func (a *agentProc) metrics() (map[string]float64, error) {
	return promtext.Get(context.Background(), "http://"+a.metricsAddr+"/metrics")
}

// sum adds the samples of metric name over all label values; ok is false
// if there is no such metric.
func sum(m map[string]float64, name string) (total float64, ok bool) {
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			total += v
			ok = true
		}
	}
	return total, ok
}

// metric returns sum(name) of sluiced's metrics and fails the test if the
// metric is missing.
func (n *node) metric(name string) float64 {
	n.t.Helper()
	m, err := n.agent.metrics()
	if err != nil {
		n.t.Fatal(err)
	}
	v, ok := sum(m, name)
	if !ok {
		var names []string
		for k := range m {
			names = append(names, k)
		}
		n.t.Fatalf("sluiced's /metrics has no %s; it has:\n%s", name, strings.Join(names, "\n"))
	}
	return v
}

// labelled returns sum(name) of sluiced's metrics, 0 if it is missing: a
// metric with labels has no sample (not even a TYPE line) before its first
// value.
func (n *node) labelled(name string) float64 {
	n.t.Helper()
	m, err := n.agent.metrics()
	if err != nil {
		n.t.Fatal(err)
	}
	v, _ := sum(m, name)
	return v
}

func quoteAll(ss []string) []string {
	var q []string
	for _, s := range ss {
		q = append(q, strconv.Quote(s))
	}
	return q
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// assertNothingLeft waits up to d for no mount or loop device to be left
// anywhere below the node (containerd's too) and no process of sluiced's
// devices (not the daemons themselves), and fails the test with what is
// still there when it gives up.
func (n *node) assertNothingLeft(d time.Duration) {
	n.t.Helper()
	var left leakcheck.Leaks
	var err error
	err = waitFor(d, func() bool {
		if left.Mounts, err = leakcheck.Mounts(n.dir); err != nil {
			return false
		}
		if left.Loops, err = leakcheck.Loops(n.dir); err != nil {
			return false
		}
		left.Procs = leakcheck.Procs(n.agent.root)
		return left.Empty()
	})
	if err != nil {
		n.t.Errorf("left after removing every container, pod and image:\n%s", left)
	}
}

// startRegistry starts a docker-registry of the test's own, keeping its
// blobs in storage, and stops it when the test ends.
func startRegistry(t *testing.T, storage string, opts ...debregistry.Option) *debregistry.Registry {
	t.Helper()
	reg, err := debregistry.Start(storage, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	return reg
}

var errTimeout = errors.New("timed out")

// waitFor polls cond every 200 ms until it is true or d passes.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}
