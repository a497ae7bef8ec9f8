package node

import (
	"bufio"
	"bytes"
	"context"
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
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/testutil"
)

// What test/vm put in the root filesystem and the run archive (see its
// node_test.go), and where the installed node keeps things.
const (
	registryDir  = "/var/lib/sluice-vm/registry"
	registryAddr = "127.0.0.1:5000"
	imageV1      = registryAddr + "/app:v1"
	imageV2      = registryAddr + "/app:v2"
	hello        = "hello from the image\n"
	helloV2      = "hello from app:v2\n"

	// stateFile is what the first boot leaves for the second.
	stateFile = "/var/lib/sluice-vm/first-boot"

	sluicedConfig    = "/etc/sluice/config.toml"
	containerdConfig = "/etc/containerd/config.toml"
	containerdSock   = "/run/containerd/containerd.sock"
	metricsAddr      = "127.0.0.1:9808" // the sample config's
	installedSluiced = "/usr/local/bin/sluiced"
	installedSluice  = "/usr/local/bin/sluice"
)

// requireNode skips the test outside the whole-node guest, and fails it
// in a guest that lacks what the node needs.
func requireNode(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) != "systemd" {
		missing = append(missing, "systemd as PID 1")
	}
	for _, c := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2", debregistry.Binary, "systemctl", "journalctl"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if _, err := os.Stat(registryDir); err != nil {
		missing = append(missing, registryDir+" (the images pushed when the guest's root filesystem was built)")
	}
	if os.Getenv("SLUICE_VM_BUNDLE") == "" || os.Getenv("SLUICE_VM_BIN") == "" || os.Getenv("SLUICE_VM_BUSYBOX") == "" {
		missing = append(missing, "the run archive ($SLUICE_VM_BUNDLE, $SLUICE_VM_BIN, $SLUICE_VM_BUSYBOX)")
	} else {
		for _, p := range []string{bundle("install-node.sh"), bundle("bin/sluice"), vmBin("crictl"), os.Getenv("SLUICE_VM_BUSYBOX")} {
			if _, err := os.Stat(p); err != nil {
				missing = append(missing, "the run archive's "+p)
			}
		}
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

// bundle is a file of the node release bundle in the guest.
func bundle(p string) string { return filepath.Join(os.Getenv("SLUICE_VM_BUNDLE"), p) }

// vmBin is a tool of the run archive.
func vmBin(name string) string { return filepath.Join(os.Getenv("SLUICE_VM_BIN"), name) }

// run runs a command and returns its combined output; failing fails the
// test.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runErr(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// systemctl runs systemctl; failing fails the test.
func systemctl(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(run(t, 3*time.Minute, "systemctl", args...))
}

// unitState returns systemctl show's value of property for unit.
func unitState(t *testing.T, unit, property string) string {
	t.Helper()
	return systemctl(t, "show", "--value", "-p", property, unit)
}

// mainPID is the unit's main process, 0 if none.
func mainPID(t *testing.T, unit string) int {
	t.Helper()
	pid, err := strconv.Atoi(unitState(t, unit, "MainPID"))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// checkActive checks that systemctl is-active says active for each unit,
// waiting up to a minute for units still starting.
func checkActive(t *testing.T, units ...string) {
	t.Helper()
	want := strings.TrimSpace(strings.Repeat("active\n", len(units)))
	var out string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		out, _ = runErr(time.Minute, "systemctl", append([]string{"is-active"}, units...)...)
		out = strings.TrimSpace(out)
		if out == want || time.Now().After(deadline) {
			break
		}
	}
	if out != want {
		t.Errorf("systemctl is-active %s:\n%s", strings.Join(units, " "), out)
		for _, u := range units {
			o, _ := runErr(time.Minute, "systemctl", "--no-pager", "status", u)
			t.Log(o)
		}
	}
}

// journal returns what unit logged in this boot; with pid > 0, what that
// process of it logged.
func journal(t *testing.T, unit string, pid int) string {
	t.Helper()
	args := []string{"-b", "--no-pager", "-o", "cat", "-u", unit}
	if pid > 0 {
		args = append(args, "_PID="+strconv.Itoa(pid))
	}
	return run(t, time.Minute, "journalctl", args...)
}

// ready runs sluiced ready on the installed node's configs.
func ready(t *testing.T) {
	t.Helper()
	out := run(t, 3*time.Minute, installedSluiced, "ready", "--config", sluicedConfig, "--containerd-config", containerdConfig, "--timeout", "2m")
	if !strings.Contains(out, "containerd answers on "+containerdSock+" with the snapshotter sluice") {
		t.Errorf("sluiced ready:\n%s", out)
	}
}

// startRegistry starts the guest's registry on 127.0.0.1:5000 with its
// access log, and returns it and the digests of the layer blobs of images.
func startRegistry(t *testing.T, images ...string) (*debregistry.Registry, map[string]bool) {
	t.Helper()
	reg, err := debregistry.Start(registryDir, debregistry.WithAccessLog(), debregistry.WithAddr(registryAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	layers := map[string]bool{}
	for _, image := range images {
		ref, err := name.ParseReference(image, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("%s, pushed when the root filesystem was built: %v", image, err)
		}
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			d, _ := l.Digest()
			layers[d.String()] = true
		}
	}
	return reg, layers
}

// mark is where the registry's access log is now.
func mark(t *testing.T, reg *debregistry.Registry) int {
	t.Helper()
	reqs, err := reg.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	return len(reqs)
}

// noLayerGETs fails the test if the registry served a layer blob since
// from; it returns how many requests it answered.
func noLayerGETs(t *testing.T, reg *debregistry.Registry, from int, layers map[string]bool, what string) int {
	t.Helper()
	reqs, err := reg.Requests(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range reqs {
		if _, d := q.Blob(); q.Method == "GET" && layers[d] {
			t.Errorf("the registry served a layer blob to %s: %s", what, q)
		}
	}
	return len(reqs)
}

// metric sums sluiced's samples of name (0 if it has none yet).
func metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
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
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total
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

// readerScript checks every file of /app against its sha256, until
// SIGTERM, printing PASS or FAILED (and what failed) after each round.
const readerScript = "trap 'exit 0' TERM; while true; do if sha256sum -c -s /app/sums.txt; then echo PASS; else echo FAILED; sha256sum -c /app/sums.txt 2>&1 | grep -v ': OK$'; fi; done"

// dropCaches drops the page cache every second until the returned
// function is called, so that a reader reads through the device.
func dropCaches() (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
				syscall.Sync()
				os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// noDeviceErrors fails the test if the kernel logged an I/O error on an
// nbd device.
func noDeviceErrors(t *testing.T) {
	t.Helper()
	out := run(t, time.Minute, "dmesg")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "I/O error") && strings.Contains(line, "nbd") {
			t.Errorf("the kernel logged an I/O error on an nbd device: %s", line)
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

// checkStreamed fails the test unless a running container's lower layer
// is an image mount of sluiced from /dev/nbdN; it returns both.
func checkStreamed(t *testing.T, id, what string) (lower, dev string) {
	t.Helper()
	lower, dev = containerLower(t, id)
	t.Logf("%s: lower layer %s, mounted from %s", what, lower, dev)
	if !strings.HasPrefix(lower, "/var/lib/sluice/images/") || !strings.HasPrefix(dev, "/dev/nbd") {
		t.Errorf("%s: the container's lower layer is %s from %q, want a sluice image mount from /dev/nbdN", what, lower, dev)
	}
	return lower, dev
}
