package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil"
)

// What test/vm put in the root filesystem (see its node_test.go).
const (
	registryDir  = "/var/lib/sluice-vm/registry"
	registryAddr = "127.0.0.1:5000"
	imageRef     = registryAddr + "/app:v1"
	hello        = "hello from the image\n"
)

// requireNode skips the test outside the whole-node guest.
func requireNode(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, c := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", debregistry.Binary} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if _, err := os.Stat(registryDir); err != nil {
		missing = append(missing, registryDir+" (the image pushed when the guest's root filesystem was built)")
	}
	if os.Getenv("SLUICE_VM_BIN") == "" {
		missing = append(missing, "$SLUICE_VM_BIN (sluice and sluiced)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "runs in test/vm's whole-node guest; missing here: " + strings.Join(missing, ", ")
	if testutil.InVM() {
		t.Fatal(msg)
	}
	testutil.SkipBecause(t, testutil.NoKernelNBD, msg)
}

func bin(name string) string { return filepath.Join(os.Getenv("SLUICE_VM_BIN"), name) }

// run runs a command and returns its combined output; failing fails the
// test.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// daemon is a background process with its log, which each start
// appends to.
type daemon struct {
	name, log string
	args      []string
	proc      *proc.Proc
	from      int64 // where the current process's log starts
}

func (d *daemon) start(t *testing.T, ready func() bool) {
	t.Helper()
	f, err := os.OpenFile(d.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		d.from = fi.Size()
	}
	cmd := exec.Command(d.args[0], d.args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	start := time.Now()
	if d.proc, err = proc.Start(cmd); err != nil {
		t.Fatal(err)
	}
	for !ready() {
		if !d.proc.Running() || time.Since(start) > 2*time.Minute {
			t.Fatalf("%s not ready:\n%s", d.name, proc.LogTail(d.log, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s ready in %v", d.name, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if d.proc.Running() {
			d.proc.Stop(20 * time.Second)
		}
	})
}

// logText is what the current process logged.
func (d *daemon) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b[min(d.from, int64(len(b))):])
}

func exists(p string) func() bool {
	return func() bool { _, err := os.Stat(p); return err == nil }
}

// TestNode: the node flow with the kernel attacher.
func TestNode(t *testing.T) {
	requireNode(t)
	dir, err := os.MkdirTemp("", "node-")
	if err != nil {
		t.Fatal(err)
	}

	reg, err := debregistry.Start(registryDir, debregistry.WithAccessLog(), debregistry.WithAddr(registryAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Stop()
	ref, err := name.ParseReference(imageRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("the image pushed at build time: %v", err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layerBlobs := map[string]bool{}
	for _, l := range layers {
		d, _ := l.Digest()
		layerBlobs[d.String()] = true
	}
	run(t, 10*time.Minute, bin("sluice"), "convert", "--plain-http", imageRef)

	// sluiced, attacher "auto": the nbd family is missing until it loads
	// the module.
	sluicedCfg := filepath.Join(dir, "sluiced.toml")
	snapSock := "/run/sluice/snapshotter.sock"
	if err := os.WriteFile(sluicedCfg, []byte(fmt.Sprintf(`attacher = "auto"
plain_http = [%q]
metrics_address = ""
[cache]
background_rate = "0"
[kernel]
timeout = "5s"
`, registryAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := &daemon{name: "sluiced", log: filepath.Join(dir, "sluiced.log"), args: []string{bin("sluiced"), "--config", sluicedCfg}}
	agentReady := func() bool { return strings.Contains(agent.logText(), "sluiced ready") }
	agent.start(t, agentReady)
	if log := agent.logText(); !strings.Contains(log, "loaded the nbd module") || !strings.Contains(log, "using kernel attacher") {
		t.Errorf("sluiced with attacher auto did not load the nbd module and choose the kernel attacher:\n%s", log)
	}

	ctrdCfg := filepath.Join(dir, "containerd.toml")
	ctrdSock := "/run/containerd/containerd.sock"
	if err := os.WriteFile(ctrdCfg, []byte(fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = %q
[proxy_plugins.sluice]
  type = "snapshot"
  address = %q
`, ctrdSock, snapSock)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrd := &daemon{name: "containerd", log: filepath.Join(dir, "containerd.log"), args: []string{"containerd", "--config", ctrdCfg}}
	ctrd.start(t, exists(ctrdSock))
	ctr := func(args ...string) string {
		t.Helper()
		return run(t, 5*time.Minute, "ctr", append([]string{"--address", ctrdSock}, args...)...)
	}

	before, err := reg.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	run(t, 5*time.Minute, bin("sluice"), "pull", "--plain-http", "--address", ctrdSock, imageRef)
	if got := ctr("run", "--rm", "--snapshotter", "sluice", imageRef, "hello", "cat", "/app/hello"); got != hello {
		t.Errorf("the container printed %q, want %q", got, hello)
	}

	// A container that checks every file of /app in a loop.
	readerLog := filepath.Join(dir, "reader.log")
	ctr("run", "-d", "--snapshotter", "sluice", "--log-uri", "file://"+readerLog, imageRef, "reader",
		"sh", "-c", "while true; do if sha256sum -c -s /app/sums.txt; then echo PASS; else echo FAILED; sha256sum -c /app/sums.txt 2>&1 | grep -v ': OK$'; fi; done")
	defer func() {
		exec.Command("ctr", "--address", ctrdSock, "task", "kill", "-s", "SIGKILL", "reader").Run()
		time.Sleep(time.Second)
		exec.Command("ctr", "--address", ctrdSock, "task", "rm", "-f", "reader").Run()
		exec.Command("ctr", "--address", ctrdSock, "container", "rm", "reader").Run()
	}()
	lower, dev := containerLower(t, "reader")
	t.Logf("the reader's lower layer: %s, mounted from %s", lower, dev)
	if !strings.HasPrefix(lower, "/var/lib/sluice/images/") || !strings.HasPrefix(dev, "/dev/nbd") {
		t.Errorf("the container's lower layer is %s from %q, want a sluice image mount from /dev/nbdN", lower, dev)
	}

	after, err := reg.Requests(len(before))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range after {
		if _, d := q.Blob(); q.Method == "GET" && layerBlobs[d] {
			t.Errorf("the registry served a layer blob to the streamed pull: %s", q)
		}
	}
	t.Logf("registry requests during pull and run: %d", len(after))

	// Restart sluiced under the running container, caches dropped so that
	// the reader reads through the device.
	stopDrop := make(chan struct{})
	dropped := make(chan struct{})
	go func() {
		defer close(dropped)
		for {
			select {
			case <-stopDrop:
				return
			case <-time.After(time.Second):
				syscall.Sync()
				os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
			}
		}
	}()
	waitPasses(t, readerLog, 2)
	agent.proc.Cmd.Process.Signal(syscall.SIGKILL)
	<-agent.proc.Done()
	time.Sleep(time.Second)
	passes := strings.Count(readFile(readerLog), "PASS")
	agent.start(t, agentReady)
	if !strings.Contains(agent.logText(), "adopted a kernel nbd device") {
		t.Errorf("the new sluiced did not adopt the device:\n%s", agent.logText())
	}
	waitPasses(t, readerLog, passes+3)
	close(stopDrop)
	<-dropped
	if l2, dev2 := containerLower(t, "reader"); l2 != lower || dev2 != dev {
		t.Errorf("after the restart the reader's lower layer is %s from %s, was %s from %s", l2, dev2, lower, dev)
	}
	logText := readFile(readerLog)
	if strings.Contains(logText, "FAILED") || strings.Contains(logText, "rror") {
		t.Errorf("the container saw errors across the restart:\n%s", logText)
	}
	t.Logf("REPORT node: reader container %d passes over /app, sluiced killed (-9) and restarted under it, %d errors",
		strings.Count(logText, "PASS"), strings.Count(logText, "FAILED"))
	if got := ctr("run", "--rm", "--snapshotter", "sluice", imageRef, "hello2", "cat", "/app/hello"); got != hello {
		t.Errorf("a new container after the restart printed %q", got)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// waitPasses waits until the reader's log has n PASS lines.
func waitPasses(t *testing.T, log string, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Minute); strings.Count(readFile(log), "PASS") < n; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader has not passed %d times in 5 minutes:\n%s", n, readFile(log))
		}
	}
}

// containerLower returns the last lowerdir of a running container's
// rootfs overlay, and the source of the mount at that directory, from
// mountinfo.
func containerLower(t *testing.T, id string) (lower, source string) {
	t.Helper()
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts := map[string]string{} // point -> source
	for _, line := range strings.Split(string(info), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(f) {
			continue
		}
		point, fstype, src, opts := f[4], f[sep+1], f[sep+2], f[sep+3]
		mounts[point] = src
		if fstype == "overlay" && strings.HasSuffix(point, "/"+id+"/rootfs") {
			for _, o := range strings.Split(opts, ",") {
				if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
					dirs := strings.Split(l, ":")
					lower = dirs[len(dirs)-1]
				}
			}
		}
	}
	if lower == "" {
		t.Fatalf("no overlay rootfs of %s in mountinfo:\n%s", id, bytes.TrimSpace(info))
	}
	return lower, mounts[lower]
}
