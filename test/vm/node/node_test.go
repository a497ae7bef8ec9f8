package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/internal/proc"
)

// operatorConfig is sluiced's config as the node's operator provisions it
// before the install, which keeps it: the guest's registry over plain
// HTTP; no background fetch, so that what is fetched is what containers
// read; and a kernel request timeout of 5 s instead of 1 min, so that the
// reads in flight when sluiced is killed are sent again soon (the test
// waits for them).
const operatorConfig = `# This node's sluiced (written before install-node.sh, which keeps it).
plain_http = ["` + registryAddr + `"]
# the test images are small: stream them
stream_min_size = "0"

[cache]
background_rate = "0"

[kernel]
timeout = "5s"
`

// TestNode, the guest's first boot: a Debian node with containerd is
// enabled by the release bundle's install-node.sh under systemd; CRI and
// ctr containers start from /dev/nbdN without a layer download; restarts
// of sluiced under a running container cost it nothing. It leaves the node
// running for the reboot (TestNodeAfterReboot).
func TestNode(t *testing.T) {
	requireNode(t)
	if _, err := os.Stat(stateFile); err == nil {
		t.Fatalf("%s exists: this disk was installed before", stateFile)
	}
	dir, err := os.MkdirTemp("", "node-")
	if err != nil {
		t.Fatal(err)
	}

	// The node as it comes: Debian's containerd runs, without sluice; no
	// nbd module.
	checkActive(t, "containerd")
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Error("the nbd module is loaded before the install")
	}
	autoLoadsModule(t, dir)

	reg, layers := startRegistry(t, imageV1, imageV2)
	// Both images are converted now; app:v2 is pulled only after the
	// reboot.
	for _, ref := range []string{imageV1, imageV2} {
		start := time.Now()
		run(t, 10*time.Minute, bundle("bin/sluice"), "convert", "--plain-http", ref)
		t.Logf("sluice convert %s: %v", ref, time.Since(start).Round(time.Millisecond))
	}
	art, err := artifact.Lookup(context.Background(), imageV1, artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}

	// The install, as a node pool's startup script runs it: the bundle's
	// script, no flags.
	if err := os.MkdirAll(filepath.Dir(sluicedConfig), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sluicedConfig, []byte(operatorConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out := run(t, 10*time.Minute, bundle("install-node.sh"))
	t.Logf("install-node.sh (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	for _, want := range []string{"loaded the nbd module (max_part=0)", "restarting containerd",
		"containerd answers on " + containerdSock + " with the snapshotter sluice"} {
		if !strings.Contains(out, want) {
			t.Errorf("install-node.sh's output lacks %q", want)
		}
	}
	if strings.Contains(out, "starting the daemons directly") {
		t.Error("install-node.sh did not use systemd")
	}
	checkActive(t, "sluiced", "containerd")
	if got := systemctl(t, "is-enabled", "sluiced"); got != "enabled" {
		t.Errorf("systemctl is-enabled sluiced: %s", got)
	}
	ready(t)
	if mp := strings.TrimSpace(readFile("/sys/module/nbd/parameters/max_part")); mp != "0" {
		t.Errorf("nbd loaded with max_part=%q, want 0", mp)
	}
	if j := journal(t, "sluiced", 0); !strings.Contains(j, "using kernel attacher") {
		t.Errorf("sluiced did not choose the kernel attacher:\n%s", j)
	}
	// Again, as a startup script runs at every boot: nothing changes,
	// nothing restarts.
	pids := []int{mainPID(t, "sluiced"), mainPID(t, "containerd")}
	out = run(t, 10*time.Minute, bundle("install-node.sh"))
	if strings.Contains(out, "installed:") || strings.Contains(out, ": changed:") || strings.Contains(out, "restarting") {
		t.Errorf("the second run of install-node.sh changed something:\n%s", out)
	}
	if got := []int{mainPID(t, "sluiced"), mainPID(t, "containerd")}; got[0] != pids[0] || got[1] != pids[1] {
		t.Errorf("the second run of install-node.sh restarted a daemon: main PIDs of sluiced and containerd %v, then %v", pids, got)
	}

	// A CRI pod, as kubelet starts one.
	importSandbox(t, dir)
	c := newCRI(t, dir)
	from := mark(t, reg)
	c.crictl("pull", imageV1)
	p := c.runPod("app")
	if got := c.output(c.start(p, "hello", imageV1, "cat", "/app/hello")); got != hello {
		t.Errorf("the CRI container printed %q, want %q", got, hello)
	}
	fetched := metric(t, "sluice_fetched_bytes_total")
	t.Logf("fetched %v of the artifact's %d data bytes for the pod", fetched, art.Data.Size)
	if fetched <= 0 || fetched >= float64(art.Data.Size)/2 {
		t.Errorf("sluice_fetched_bytes_total = %v; want some, and well below the artifact's %d data bytes", fetched, art.Data.Size)
	}
	// A container checking every file of /app, in a loop.
	reader := c.start(p, "reader", imageV1, "sh", "-c", readerScript)
	readerLog := filepath.Join(p.logs, "reader.log")
	lower, dev := checkStreamed(t, reader, "the CRI reader")
	n := noLayerGETs(t, reg, from, layers, "the CRI pull and pod")
	t.Logf("registry requests during the CRI pull and pod: %d", n)

	// sluice pull and ctr run, outside CRI.
	from = mark(t, reg)
	run(t, 5*time.Minute, installedSluice, "pull", "--plain-http", "--address", containerdSock, imageV1)
	if got := run(t, 5*time.Minute, "ctr", "--address", containerdSock, "run", "--rm", "--snapshotter", "sluice", imageV1, "hello-ctr", "cat", "/app/hello"); got != hello {
		t.Errorf("the ctr container printed %q, want %q", got, hello)
	}
	noLayerGETs(t, reg, from, layers, "sluice pull and ctr run")

	// sluiced restarted under the reader, page caches dropped so that it
	// reads through the device: by systemctl restart (SIGTERM), then
	// killed (-9) and restarted by systemd.
	stop := dropCaches()
	waitPasses(t, readerLog, 2)
	pid0 := mainPID(t, "sluiced")
	systemctl(t, "restart", "sluiced")
	pid1 := mainPID(t, "sluiced")
	if pid1 == 0 || pid1 == pid0 {
		t.Errorf("systemctl restart sluiced: main PID %d, then %d", pid0, pid1)
	}
	checkActive(t, "sluiced")
	journalWait(t, "sluiced", pid1, "adopted a kernel nbd device")
	waitPasses(t, readerLog, strings.Count(readFile(readerLog), "PASS")+3)

	restarts, _ := strconv.Atoi(unitState(t, "sluiced", "NRestarts"))
	if err := syscall.Kill(pid1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pid2 := waitRestarted(t, "sluiced", pid1)
	if got, _ := strconv.Atoi(unitState(t, "sluiced", "NRestarts")); got != restarts+1 {
		t.Errorf("sluiced's NRestarts %d after kill -9, was %d", got, restarts)
	}
	journalWait(t, "sluiced", pid2, "adopted a kernel nbd device")
	waitPasses(t, readerLog, strings.Count(readFile(readerLog), "PASS")+3)
	stop()

	if l2, dev2 := containerLower(t, reader); l2 != lower || dev2 != dev {
		t.Errorf("after the restarts the reader's lower layer is %s from %s, was %s from %s", l2, dev2, lower, dev)
	}
	logText := readFile(readerLog)
	if strings.Contains(logText, "FAILED") || strings.Contains(logText, "rror") {
		t.Errorf("the container saw errors across the restarts:\n%s", logText)
	}
	noDeviceErrors(t)
	t.Logf("REPORT node (systemd): CRI reader container %d passes over /app, sluiced restarted (systemctl restart) and killed (-9, restarted by systemd) under it, %d errors",
		strings.Count(logText, "PASS"), strings.Count(logText, "FAILED"))
	if got := c.output(c.start(p, "hello-after", imageV1, "cat", "/app/hello")); got != hello {
		t.Errorf("a new container after the restarts printed %q", got)
	}

	// For the next boot: this boot's ID. The reader keeps running.
	if err := os.WriteFile(stateFile, []byte(bootID(t)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// autoLoadsModule: sluiced with attacher = "auto", where the nbd family is
// missing but the module exists, loads it (modprobe, with max_part=0) and
// picks the kernel attacher. That sluiced runs on state of its own, below
// dir, and stops; the module is unloaded again, for the install to load.
func autoLoadsModule(t *testing.T, dir string) {
	t.Helper()
	state := filepath.Join(dir, "auto")
	config := filepath.Join(dir, "auto.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`attacher = "auto"
root = %q
address = %q
nbd_socket = %q
metrics_address = ""
[cache]
dir = %q
`, filepath.Join(state, "root"), filepath.Join(state, "snapshotter.sock"), filepath.Join(state, "nbd.sock"), filepath.Join(state, "cache"))), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "auto.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bundle("bin/sluiced"), "--config", config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p, err := proc.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !strings.Contains(readFile(logPath), "sluiced ready"); time.Sleep(100 * time.Millisecond) {
		if !p.Running() || time.Since(start) > 2*time.Minute {
			p.Stop(20 * time.Second)
			t.Fatalf("sluiced (attacher auto) not ready:\n%s", readFile(logPath))
		}
	}
	if !p.Stop(30 * time.Second) {
		t.Error("sluiced did not stop within 30 s of SIGTERM")
	}
	if log := readFile(logPath); !strings.Contains(log, "loaded the nbd module") || !strings.Contains(log, "max_part=0") || !strings.Contains(log, "using kernel attacher") {
		t.Errorf("sluiced with attacher auto did not load the nbd module (max_part=0) and choose the kernel attacher:\n%s", log)
	}
	run(t, time.Minute, "modprobe", "-r", "nbd")
}

// bootID is the kernel's ID of this boot.
func bootID(t *testing.T) string {
	t.Helper()
	id := strings.TrimSpace(readFile("/proc/sys/kernel/random/boot_id"))
	if id == "" {
		t.Fatal("no /proc/sys/kernel/random/boot_id")
	}
	return id
}

// journalWait waits (30 s at most) until process pid of unit has logged
// want.
func journalWait(t *testing.T, unit string, pid int, want string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		j := journal(t, unit, pid)
		if strings.Contains(j, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s (PID %d) has not logged %q:\n%s", unit, pid, want, j)
			return
		}
	}
}

// waitRestarted waits (2 min at most) until systemd has restarted unit,
// whose main process old died: a new main process, and the unit active
// again (sluiced's ExecStartPost, sluiced ready, passed).
func waitRestarted(t *testing.T, unit string, old int) int {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		pid := mainPID(t, unit)
		state := unitState(t, unit, "ActiveState")
		if pid != 0 && pid != old && state == "active" {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not restarted 2 min after its PID %d died: PID %d, %s", unit, old, pid, state)
		}
	}
}

// TestNodeAfterReboot, the guest's second boot, of the disk the first left:
// the node came back by itself (units enabled, the nbd module loaded at
// boot), and pods start from /dev/nbdN without a layer download: one of
// the image pulled before the reboot, whose image mount the reboot took
// away, and one of an image pulled now.
func TestNodeAfterReboot(t *testing.T) {
	requireNode(t)
	first, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatalf("the first boot left no %s (its TestNode did not finish): %v", stateFile, err)
	}
	if id := bootID(t); id == strings.TrimSpace(string(first)) {
		t.Fatalf("boot ID %s is the first boot's: the guest did not reboot", id)
	}
	t.Logf("boots in the journal:\n%s", run(t, time.Minute, "journalctl", "--list-boots", "--no-pager"))
	// The first boot ended as a node's reboot does: systemd stopped the
	// units, sluiced leaving its image mounts.
	end := run(t, time.Minute, "journalctl", "-b", "-1", "--no-pager", "-o", "short-monotonic", "-n", "30", "-u", "sluiced", "-u", "containerd")
	t.Logf("the first boot's end, as its journal shows it (sluiced, containerd):\n%s", end)
	if !strings.Contains(end, "Stopped containerd.service") || !strings.Contains(end, "sluiced stopped; image mounts stay for the next start") {
		t.Error("the first boot did not end with systemd stopping containerd and sluiced")
	}

	checkActive(t, "sluiced", "containerd")
	if got := systemctl(t, "is-enabled", "sluiced"); got != "enabled" {
		t.Errorf("systemctl is-enabled sluiced: %s", got)
	}
	// It logs before the journal knows its unit: found by its identifier.
	if j := run(t, time.Minute, "journalctl", "-b", "--no-pager", "-o", "cat", "-t", "systemd-modules-load"); !strings.Contains(j, "Inserted module 'nbd'") {
		t.Errorf("systemd-modules-load did not load nbd at boot:\n%s", j)
	}
	if mp := strings.TrimSpace(readFile("/sys/module/nbd/parameters/max_part")); mp != "0" {
		t.Errorf("nbd loaded with max_part=%q, want 0", mp)
	}
	j := journal(t, "sluiced", 0)
	if !strings.Contains(j, "using kernel attacher") || strings.Contains(j, "loaded the nbd module") {
		t.Errorf("sluiced should find the nbd module loaded and use the kernel attacher:\n%s", j)
	}
	ready(t)

	reg, layers := startRegistry(t, imageV1, imageV2)
	art, err := artifact.Lookup(context.Background(), imageV2, artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "reboot-")
	if err != nil {
		t.Fatal(err)
	}
	c := newCRI(t, dir)
	from := mark(t, reg)
	p := c.runPod("after-reboot")
	v1 := c.start(p, "v1", imageV1, "sh", "-c", "cat /app/hello; sha256sum -c -s /app/sums.txt && echo SUMS OK; "+untilTERM)
	logUntil(t, p, "v1", "SUMS OK")
	logUntil(t, p, "v1", strings.TrimSpace(hello))
	_, dev1 := checkStreamed(t, v1, "app:v1, pulled before the reboot")

	c.crictl("pull", imageV2)
	v2 := c.start(p, "v2", imageV2, "sh", "-c", "cat /app/v2; "+untilTERM)
	logUntil(t, p, "v2", strings.TrimSpace(helloV2))
	if _, dev2 := checkStreamed(t, v2, "app:v2, pulled after the reboot"); dev2 == dev1 {
		t.Errorf("app:v1 and app:v2 share the device %s", dev1)
	}
	n := noLayerGETs(t, reg, from, layers, "the pods after the reboot")
	fetched := metric(t, "sluice_fetched_bytes_total")
	if fetched >= float64(art.Data.Size)/2 {
		t.Errorf("sluice_fetched_bytes_total = %v after the reboot; want well below app:v2's %d data bytes", fetched, art.Data.Size)
	}
	noDeviceErrors(t)
	t.Logf("REPORT node after reboot: pods of app:v1 (pulled before) and app:v2 (pulled after) from /dev/nbdN, %d registry requests, %s fetched of app:v2's %d data bytes",
		n, fmt.Sprint(fetched), art.Data.Size)
}
