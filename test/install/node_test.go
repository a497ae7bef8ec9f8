package install

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

const sandboxRef = "sluice.test/pause:v1"

var fixedTime = time.Unix(1_700_000_000, 0)

func meta(mode int64) imagebuild.Meta { return imagebuild.Meta{Mode: mode, ModTime: fixedTime} }

// node is a node installed by install-node.sh under prefix.
type node struct {
	t          *testing.T
	prefix     string
	b          *built
	ctrdCfg    containerdtest.Config
	containerd *containerdtest.Containerd // attached to the one the script started
	metrics    string                     // sluiced's host:port
}

// TestInstallNode: on this machine (no systemd as init), install-node.sh
// --prefix, given the node's containerd config (Debian's containerd 1.6)
// and a trust key, leaves a working node: it installs every file below the
// prefix, starts sluiced and containerd itself and waits for both; a CRI
// pod then starts from a signed, converted image without downloading a
// layer, reading only part of the image. A second run changes no file and
// restarts nothing; --uninstall stops sluiced, restores containerd's config
// byte for byte and removes what it installed.
func TestInstallNode(t *testing.T) {
	crictl := testutil.Check("crictl", func() error { _, err := containerdtest.CrictlPath(); return err })
	testutil.Require(t, testutil.Root, crictl, testutil.Check(containerdtest.V1.String(), containerdtest.V1.Available),
		testutil.Tool(debregistry.Binary, "nbdfuse", "nbdkit", "losetup", "fusermount3", "setsid", "diff", "cmp", "install"))
	b := binaries(t)
	start := time.Now()
	prefix, err := os.MkdirTemp("", "sluice-install-node-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, prefix: prefix, b: b}
	t.Cleanup(n.teardown)

	reg, err := debregistry.Start(filepath.Join(prefix, "test", "registry"), debregistry.WithAccessLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	img := n.image(reg.Addr + "/install/app:v1")
	t.Setenv(signature.PasswordEnv, "install-test")
	priv, pub := n.keyPair()
	mustRun(t, nil, b.sluice, "convert", "--plain-http", "--sign-key", priv, img.ref)
	art, err := artifact.Lookup(context.Background(), img.ref, artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}

	// The node as it was: containerd's config and sluiced's.
	n.ctrdCfg = containerdtest.Config{
		Dir: filepath.Join(prefix, "var", "lib", "containerd-test"), Version: containerdtest.V1,
		Snapshotter: "overlayfs", SandboxImage: sandboxRef, Registries: []string{reg.Addr},
	}
	if err := os.MkdirAll(n.ctrdCfg.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctrdConfig, err := containerdtest.ConfigFile(n.ctrdCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrdPath := filepath.Join(prefix, "etc", "containerd", "config.toml")
	writeFile(t, ctrdPath, ctrdConfig, 0o644)
	n.writeSluicedConfig(reg.Addr)

	r := n.script("--trust-key", pub)
	t.Logf("install-node.sh (%v):\n%s%s", time.Since(start).Round(time.Millisecond), r.stdout, r.stderr)
	for _, want := range []string{"--prefix given", "starting the daemons directly", "started sluiced", "started containerd",
		"containerd answers on " + filepath.Join(n.ctrdCfg.Dir, "containerd.sock") + " with the snapshotter sluice"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("install-node.sh's output lacks %q", want)
		}
	}
	// Under --prefix no module is loaded, whatever the kernel has.
	if !strings.Contains(r.stdout, "no nbd module on this kernel") && !strings.Contains(r.stdout, "nbd module loaded") &&
		!strings.Contains(r.stdout, "--prefix loads no module") {
		t.Error("install-node.sh says nothing about the nbd module")
	}
	n.checkFiles(pub)

	if n.containerd, err = containerdtest.Attach(n.ctrdCfg); err != nil {
		t.Fatal(err)
	}
	n.startPod(reg, img, art)

	// Again: no file changes, nothing restarts.
	pids := n.pids()
	tree := n.tree()
	r = n.script("--trust-key", pub)
	if strings.Contains(r.stdout, "installed:") || strings.Contains(r.stdout, ": changed:") || strings.Contains(r.stdout, "started ") {
		t.Errorf("the second run changed something:\n%s", r.stdout)
	}
	if d := diffKeys(tree, n.tree()); len(d) > 0 {
		t.Errorf("the second run changed files:\n%s", strings.Join(d, "\n"))
	}
	if got := n.pids(); got != pids {
		t.Errorf("the second run restarted a daemon: PIDs %v, then %v", pids, got)
	}
	r = n.script("--dry-run")
	if strings.Contains(r.stdout, "would ") {
		t.Errorf("a dry run on the installed node would change something:\n%s", r.stdout)
	}

	// Uninstall: pods first, as an operator drains a node.
	n.crictl("rmp", "-fa")
	r = n.script("--uninstall")
	t.Logf("install-node.sh --uninstall:\n%s%s", r.stdout, r.stderr)
	if got := readFile(t, ctrdPath); got != ctrdConfig {
		t.Errorf("containerd's config not restored byte for byte:\n%s", got)
	}
	for _, p := range []string{"usr/local/bin/sluiced", "usr/local/bin/sluice", "etc/systemd/system/sluiced.service",
		"etc/systemd/system/containerd.service.d/10-sluice.conf", "etc/modules-load.d/sluice.conf", "etc/modprobe.d/sluice.conf",
		"etc/containerd/config.toml.sluice-backup"} {
		if _, err := os.Stat(filepath.Join(prefix, p)); err == nil {
			t.Errorf("%s left after --uninstall", p)
		}
	}
	if pid := pidFile(prefix, "sluiced"); pid > 0 && leakcheck.Alive(pid) {
		t.Errorf("sluiced (PID %d) still runs after --uninstall", pid)
	}
	if pid := pidFile(prefix, "containerd"); pid <= 0 || pid == pids[1] || !leakcheck.Alive(pid) {
		t.Errorf("containerd not restarted on its restored config: PID %d (was %d)", pid, pids[1])
	}
	n.checkNoRace()
}

// script runs install-node.sh on the node; a failure fails the test.
func (n *node) script(args ...string) result {
	n.t.Helper()
	return mustRun(n.t, nil, installScript(), append([]string{"--prefix", n.prefix, "--bin-dir", n.b.dir}, args...)...)
}

// testImage is the image the pod runs.
type testImage struct {
	ref    string
	layers map[string]bool // layer blob digests
	config string
	small  string // /data/small.txt
	bigSum string // sha256 of /data/big.bin
}

// image builds a busybox image with a small file and a big one, pushes
// it, and writes the sandbox image's archive.
func (n *node) image(ref string) *testImage {
	n.t.Helper()
	rng := rand.NewChaCha8([32]byte{'i', 'n', 's', 't', 'a', 'l', 'l'})
	big := make([]byte, 24<<20)
	_, _ = rng.Read(big)
	sum := sha256.Sum256(big)
	ti := &testImage{ref: ref, layers: map[string]bool{}, small: "installed by install-node.sh\n", bigSum: hex.EncodeToString(sum[:])}

	root := imagebuild.New().Layer()
	if err := busyboxRoot(root); err != nil {
		n.t.Fatal(err)
	}
	data := imagebuild.New().Layer()
	data.Dir("data", meta(0o755))
	data.File("data/small.txt", []byte(ti.small), meta(0o644))
	data.File("data/big.bin", big, meta(0o644))
	img := n.imageOf([]*imagebuild.Layer{root, data}, nil)
	ls, _ := img.Layers()
	for _, l := range ls {
		d, _ := l.Digest()
		ti.layers[d.String()] = true
	}
	cd, _ := img.ConfigName()
	ti.config = cd.String()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		n.t.Fatal(err)
	}

	// The sandbox (pause) image: sleeps.
	pause := imagebuild.New().Layer()
	if err := busyboxRoot(pause); err != nil {
		n.t.Fatal(err)
	}
	tag, _ := name.NewTag(sandboxRef)
	if err := tarball.WriteToFile(n.sandboxArchive(), tag, n.imageOf([]*imagebuild.Layer{pause}, []string{"/bin/sleep", "2147483647"})); err != nil {
		n.t.Fatal(err)
	}
	return ti
}

func (n *node) sandboxArchive() string { return filepath.Join(n.prefix, "test", "sandbox.tar") }

func (n *node) imageOf(layers []*imagebuild.Layer, entrypoint []string) v1.Image {
	n.t.Helper()
	var gz [][]byte
	for _, l := range layers {
		g, err := l.Gzip()
		if err != nil {
			n.t.Fatal(err)
		}
		gz = append(gz, g)
	}
	img, err := imagebuild.Image(gz...)
	if err != nil {
		n.t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		n.t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Entrypoint = entrypoint
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		n.t.Fatal(err)
	}
	return img
}

// busyboxRoot adds Debian's static busybox and its applets.
func busyboxRoot(l *imagebuild.Layer) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static (scripts/install-deps.sh installs it): %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp"} {
		l.Dir(d, meta(0o755))
	}
	l.File("bin/busybox", bb, meta(0o755))
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			l.Symlink("bin/"+a, "busybox", meta(0o777))
		}
	}
	return nil
}

// keyPair writes a cosign-format key pair for signing the artifact.
func (n *node) keyPair() (priv, pub string) {
	n.t.Helper()
	privPEM, pubPEM, err := signature.GenerateKey([]byte("install-test"))
	if err != nil {
		n.t.Fatal(err)
	}
	priv, pub = filepath.Join(n.prefix, "test", "ci.key"), filepath.Join(n.prefix, "test", "ci.pub")
	writeFile(n.t, priv, string(privPEM), 0o600)
	writeFile(n.t, pub, string(pubPEM), 0o644)
	return priv, pub
}

// writeSluicedConfig writes the operator's sluiced config before the
// install (which keeps it): state, sockets and cache below the prefix, a
// free metrics port, the test registry over plain HTTP, the portable
// attacher, and no background fetch, so that what is fetched is what was
// read.
func (n *node) writeSluicedConfig(registry string) {
	n.t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		n.t.Fatal(err)
	}
	n.metrics = fmt.Sprintf("127.0.0.1:%d", port)
	p := n.prefix
	writeFile(n.t, filepath.Join(p, "etc", "sluice", "config.toml"), fmt.Sprintf(`# this node's sluiced
root = %q
address = %q
nbd_socket = %q
metrics_address = %q
log_level = "debug"
attacher = "portable"
plain_http = [%q]
# the test images are a few KiB: stream them
stream_min_size = "0"

[cache]
dir = %q
background_rate = "0"

[trust]
# set by install-node.sh --trust-key
policy = "any"
keys = []
`, filepath.Join(p, "var/lib/sluice"), filepath.Join(p, "run/sluice/snapshotter.sock"), filepath.Join(p, "run/sluice/nbd.sock"),
		n.metrics, registry, filepath.Join(p, "var/cache/sluice/chunks")), 0o644)
}

// checkFiles checks what the install wrote below the prefix.
func (n *node) checkFiles(pub string) {
	t, p := n.t, n.prefix
	for _, f := range []string{"usr/local/bin/sluice", "usr/local/bin/sluiced"} {
		if st, err := os.Stat(filepath.Join(p, f)); err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v", f, err)
		}
	}
	key := filepath.Join(p, "etc/sluice/keys", filepath.Base(pub))
	if readFile(t, key) != readFile(t, pub) {
		t.Errorf("trust key not installed as %s", key)
	}
	cfg := readFile(t, filepath.Join(p, "etc/sluice/config.toml"))
	for _, want := range []string{"# this node's sluiced\n", "# set by install-node.sh --trust-key\npolicy = \"signed\"\nkeys = [\"" + key + "\"]\n"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("sluiced's config lacks %q:\n%s", want, cfg)
		}
	}
	unit := readFile(t, filepath.Join(p, "etc/systemd/system/sluiced.service"))
	if !strings.Contains(unit, "ExecStart="+p+"/usr/local/bin/sluiced --config "+p+"/etc/sluice/config.toml\n") {
		t.Errorf("the unit does not start the installed sluiced on its config:\n%s", unit)
	}
	checkUnitFiles(t, p)
	if readFile(t, filepath.Join(p, "etc/containerd/config.toml.sluice-backup")) == "" {
		t.Error("no backup of containerd's config")
	}
}

// startPod runs a pod of the image through CRI and checks that it
// streamed.
func (n *node) startPod(reg *debregistry.Registry, img *testImage, art *artifact.Artifact) {
	t := n.t
	ctx := context.Background()
	if err := n.containerd.Import(ctx, "k8s.io", "sluice", n.sandboxArchive()); err != nil {
		t.Fatalf("importing the sandbox image: %v", err)
	}
	reqs, err := reg.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	mark := len(reqs)
	n.crictl("pull", img.ref)
	pod := n.crictl("runp", n.writeJSON("pod.json", map[string]any{
		"metadata":      map[string]any{"name": "install", "namespace": "sluice-e2e", "uid": "install-1", "attempt": 0},
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
		"log_directory": filepath.Join(n.prefix, "test", "logs"),
	}))
	ctr := n.crictl("create", pod, n.writeJSON("ctr.json", map[string]any{
		"metadata": map[string]any{"name": "reader"},
		"image":    map[string]any{"image": img.ref},
		"command":  []string{"/bin/sh", "-c", "cat /data/small.txt && ls -l /data/big.bin"},
		"log_path": "reader.log",
		"linux":    map[string]any{},
	}), filepath.Join(n.prefix, "test", "pod.json"))
	n.crictl("start", ctr)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		state := n.crictl("inspect", "-o", "go-template", "--template", "{{.status.state}} {{.status.exitCode}}", ctr)
		if strings.HasPrefix(state, "CONTAINER_EXITED") {
			out := n.crictl("logs", ctr)
			if state != "CONTAINER_EXITED 0" || !strings.HasPrefix(out, img.small) || !strings.Contains(out, strconv.Itoa(24<<20)) {
				t.Fatalf("container: %s, output:\n%s", state, out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container still %s after 2 min", state)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// No layer was downloaded: only the image's config and the artifact.
	reqs, err = reg.Requests(mark)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range reqs {
		if _, d := q.Blob(); d != "" && q.Method == "GET" && img.layers[d] {
			t.Errorf("the pull downloaded layer blob %s", d)
		}
	}
	// Lazily: what was read, not the whole image (24 MiB of random data
	// that no one read).
	fetched := n.metric("sluice_fetched_bytes_total")
	if fetched <= 0 || fetched >= float64(art.Data.Size)/2 {
		t.Errorf("sluice_fetched_bytes_total = %v; want some, and well below the artifact's %d data bytes", fetched, art.Data.Size)
	}
	t.Logf("fetched %v of the artifact's %d data bytes", fetched, art.Data.Size)
	if rej := n.metric("sluice_rejected_artifacts_total"); rej != 0 {
		t.Errorf("sluice_rejected_artifacts_total = %v: the signed artifact was refused", rej)
	}
}

func (n *node) crictl(args ...string) string {
	n.t.Helper()
	out, err := n.containerd.Crictl(context.Background(), args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func (n *node) writeJSON(file string, v any) string {
	n.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		n.t.Fatal(err)
	}
	p := filepath.Join(n.prefix, "test", file)
	writeFile(n.t, p, string(b), 0o644)
	return p
}

// metric sums sluiced's samples of name (0 if it has none yet).
func (n *node) metric(name string) float64 {
	n.t.Helper()
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	var total float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// pids returns the PIDs of sluiced and containerd from the script's pid
// files.
func (n *node) pids() [2]int {
	return [2]int{pidFile(n.prefix, "sluiced"), pidFile(n.prefix, "containerd")}
}

func pidFile(prefix, name string) int {
	b, err := os.ReadFile(filepath.Join(prefix, "run", "sluice", name+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// tree returns the sha256 and mode of every file the install manages
// (below etc and usr), by path.
func (n *node) tree() map[string]string {
	n.t.Helper()
	out := map[string]string{}
	for _, top := range []string{"etc", "usr"} {
		err := filepath.WalkDir(filepath.Join(n.prefix, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			out[p] = fmt.Sprintf("%x %v", sum, info.Mode())
			return nil
		})
		if err != nil {
			n.t.Fatal(err)
		}
	}
	return out
}

// checkNoRace fails the test if the race detector reported in sluiced's
// log.
func (n *node) checkNoRace() {
	if b, _ := os.ReadFile(filepath.Join(n.prefix, "var", "log", "sluice", "sluiced.log")); strings.Contains(string(b), "WARNING: DATA RACE") {
		n.t.Errorf("sluiced reported a data race:\n%s", b)
	}
}

// teardown removes pods, stops the daemons the script started (by PID)
// and their shims, and sweeps what is left below the prefix.
func (n *node) teardown() {
	t := n.t
	if n.containerd != nil {
		_, _ = n.containerd.Crictl(context.Background(), "rmp", "-fa")
	}
	for _, name := range []string{"containerd", "sluiced"} {
		if pid := pidFile(n.prefix, name); pid > 0 && leakcheck.Alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 200 && leakcheck.Alive(pid); i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	if n.containerd != nil {
		for _, pid := range n.containerd.Shims() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if t.Failed() {
		for _, name := range []string{"sluiced", "containerd"} {
			t.Logf("%s log (end):\n%s", name, proc.LogTail(filepath.Join(n.prefix, "var", "log", "sluice", name+".log"), 40))
		}
	}
	found, err := leakcheck.Sweep(n.prefix)
	if !found.Empty() {
		t.Logf("swept after the node stopped:\n%s", found)
	}
	if err != nil {
		t.Errorf("cleaning the node up: %v", err)
		return
	}
	if err := os.RemoveAll(n.prefix); err != nil {
		t.Errorf("removing %s: %v", n.prefix, err)
	}
}
