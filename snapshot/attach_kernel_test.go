package snapshot

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testutil"
)

// childEnv makes the test binary run one of childModes instead of the
// tests: a process with other credentials than the test's.
const childEnv = "SLUICE_SNAPSHOT_TEST_CHILD"

var childModes = map[string]func() error{
	"unprivileged-attach": unprivilegedAttach,
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := childModes[mode](); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeModprobe writes a modprobe that records its arguments in dir/args,
// prints output and exits with code; with createMarker it creates
// dir/loaded (which a fake family lookup can wait for).
func fakeModprobe(t *testing.T, dir, output string, code int, createMarker bool) string {
	t.Helper()
	script := "#!/bin/sh\necho \"$@\" > " + filepath.Join(dir, "args") + "\n"
	if createMarker {
		script += "touch " + filepath.Join(dir, "loaded") + "\n"
	}
	script += fmt.Sprintf("echo %q >&2\nexit %d\n", output, code)
	p := filepath.Join(dir, "modprobe")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var errNoFamily = errors.New("no such file or directory")

func TestKernelAttacherWithoutModule(t *testing.T) {
	testutil.Require(t, testutil.Check("CAP_SYS_ADMIN (Available checks it before the module)", func() error {
		if !hasCapSysAdmin() {
			return errors.New("not held")
		}
		return nil
	}))
	ctx := testContext(t)
	dir := tempDir(t)
	a := NewKernelAttacher(filepath.Join(dir, "state"), serveFile(t, buildEmpty(t), "img"), KernelNBDsMax(4))
	a.modprobe = fakeModprobe(t, dir, "modprobe: FATAL: Module nbd not found in directory /lib/modules/test", 1, false)
	a.lookup = func() (nbdNetlink, error) { return nbdNetlink{}, errNoFamily }

	err := a.Available(ctx)
	if !errors.Is(err, ErrNoNBDFamily) {
		t.Fatalf("Available = %v, want ErrNoNBDFamily", err)
	}
	for _, want := range []string{"nbd nbds_max=4 max_part=0", "Module nbd not found", "exit status 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Available = %q, does not say %q", err, want)
		}
	}
	if args, _ := os.ReadFile(filepath.Join(dir, "args")); string(args) != "nbd nbds_max=4 max_part=0\n" {
		t.Errorf("modprobe ran with %q", args)
	}
	// auto falls back, saying why.
	portable := &fakeAttacher{name: "portable"}
	got, why, err := SelectAttacher(ctx, a, portable)
	if err != nil || got != portable {
		t.Fatalf("SelectAttacher = %v, %v", got, err)
	}
	if !strings.Contains(why, "kernel unavailable") || !strings.Contains(why, "Module nbd not found") || !strings.Contains(why, "using portable") {
		t.Errorf("why = %q", why)
	}
	if _, err := a.Attach(ctx, Export{Name: "img"}); !errors.Is(err, ErrNoNBDFamily) || !strings.Contains(err.Error(), "img") {
		t.Errorf("Attach without the module: %v", err)
	}
	a.Close()
	if _, err := a.Attach(ctx, Export{Name: "img"}); !errors.Is(err, ErrAttacherClosed) {
		t.Errorf("Attach after Close: %v", err)
	}
}

func TestKernelAttacherLoadsModule(t *testing.T) {
	testutil.Require(t, testutil.Check("CAP_SYS_ADMIN (Available checks it before the module)", func() error {
		if !hasCapSysAdmin() {
			return errors.New("not held")
		}
		return nil
	}))
	ctx := testContext(t)
	dir := tempDir(t)
	a := NewKernelAttacher(filepath.Join(dir, "state"), serveFile(t, buildEmpty(t), "img"))
	a.modprobe = fakeModprobe(t, dir, "", 0, true)
	a.lookup = func() (nbdNetlink, error) {
		if _, err := os.Stat(filepath.Join(dir, "loaded")); err != nil {
			return nbdNetlink{}, errNoFamily
		}
		return nbdNetlink{family: 42}, nil
	}
	if err := a.Available(ctx); err != nil {
		t.Fatalf("Available after loading the module: %v", err)
	}
	want := fmt.Sprintf("nbd nbds_max=%d max_part=0\n", DefaultKernelNBDsMax)
	if args, _ := os.ReadFile(filepath.Join(dir, "args")); string(args) != want {
		t.Errorf("modprobe ran with %q, want %q", args, want)
	}

	// Loaded, yet no family: said so.
	b := NewKernelAttacher(filepath.Join(dir, "state2"), serveFile(t, buildEmpty(t), "img"))
	b.modprobe = fakeModprobe(t, t.TempDir(), "", 0, false)
	b.lookup = func() (nbdNetlink, error) { return nbdNetlink{}, errNoFamily }
	if err := b.Available(ctx); !errors.Is(err, ErrNoNBDFamily) || !strings.Contains(err.Error(), "module is loaded but") {
		t.Errorf("Available with a module that registers no family: %v", err)
	}
}

// TestNewAttacherOnThisHost: "auto" picks the kernel attacher where it
// works and portable elsewhere (as on this project's CI hosts, whose kernel
// has no nbd module), saying why; "kernel" fails where it cannot work.
func TestNewAttacherOnThisHost(t *testing.T) {
	testutil.RequirePortable(t)
	ctx := testContext(t)
	dir := tempDir(t)
	srv := serveFile(t, buildEmpty(t), "img")
	kernelErr := NewKernelAttacher(filepath.Join(dir, "probe"), srv).Available(ctx)
	t.Logf("kernel attacher here: %v", kernelErr)

	att, why, err := NewAttacher(ctx, AttacherConfig{Mode: AttachAuto, StateDir: dir, Server: srv})
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := att.(interface{ Close() error }); ok {
		defer c.Close()
	}
	t.Logf("auto: %s", why)
	if kernelErr == nil {
		if att.Name() != "kernel" || !strings.Contains(why, "using kernel") {
			t.Errorf("auto with a working kernel driver chose %s: %s", att.Name(), why)
		}
		return
	}
	if att.Name() != "portable" {
		t.Errorf("auto without a working kernel driver chose %s", att.Name())
	}
	if !strings.Contains(why, "kernel unavailable: "+kernelErr.Error()) || !strings.Contains(why, "using portable") {
		t.Errorf("auto's reason %q does not say why the kernel attacher is not used (%v)", why, kernelErr)
	}
	_, _, err = NewAttacher(ctx, AttacherConfig{Mode: AttachKernel, StateDir: dir, Server: srv})
	if !errors.Is(err, ErrNoAttacher) || !strings.Contains(err.Error(), kernelErr.Error()) {
		t.Errorf(`attacher "kernel" where it cannot work: %v`, err)
	}
	if _, _, err := NewAttacher(ctx, AttacherConfig{Mode: "nbd", StateDir: dir}); err == nil || !strings.Contains(err.Error(), `"nbd"`) {
		t.Errorf("unknown mode: %v", err)
	}
}

// TestKernelAttacherForgetsWithoutModule: state of devices whose module is
// gone (a reboot without it) is dropped; Detach and Adopt of unknown
// devices behave.
func TestKernelAttacherForgetsWithoutModule(t *testing.T) {
	ctx := testContext(t)
	dir := tempDir(t)
	a := NewKernelAttacher(dir, serveFile(t, buildEmpty(t), "img"))
	a.lookup = func() (nbdNetlink, error) { return nbdNetlink{}, errNoFamily }
	st := kernelState{ID: "0123", Index: 3, Backend: backendID("0123", "img"), Export: Export{Name: "img"}, Size: 1 << 20, Connections: 2}
	if err := a.saveState(st); err != nil {
		t.Fatal(err)
	}
	devs, err := a.Devices(ctx)
	if err != nil || len(devs) != 0 {
		t.Errorf("Devices = %v, %v; want none", devs, err)
	}
	if _, err := os.Stat(a.statePath("0123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state of a device that cannot exist was kept: %v", err)
	}
	if err := a.Detach(ctx, &Device{ID: "0123"}); err != nil {
		t.Errorf("Detach of a device already gone: %v", err)
	}
	if err := a.Adopt(ctx, &Device{ID: "0123"}, Export{Name: "img"}); err == nil {
		t.Error("Adopt of an unknown device succeeded")
	}
}

func TestHungUp(t *testing.T) {
	pairs, err := newSocketPairs(2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeServerEnds(pairs)
	defer closeKernelEnds(pairs)
	unix.Close(pairs[1].kernel)
	pairs[1].kernel = -1
	if hungUp(pairs[0].server) {
		t.Error("a socket whose peer is open reads as hung up")
	}
	if !hungUp(pairs[1].server) {
		t.Error("a socket whose peer is closed does not read as hung up")
	}
}

func TestThreadStateAndSeconds(t *testing.T) {
	if s := threadState(fmt.Sprintf("/proc/self/task/%d/stat", unix.Gettid())); s != 'R' && s != 'S' {
		t.Errorf("state of the running thread: %q", s)
	}
	for d, want := range map[time.Duration]uint64{0: 1, time.Millisecond: 1, time.Second: 1, 1500 * time.Millisecond: 2, time.Minute: 60} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// buildEmpty is a 1 MiB file for tests that never read it.
func buildEmpty(t *testing.T) string {
	t.Helper()
	p := filepath.Join(tempDir(t), "empty.img")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The tests below need the kernel nbd driver: test/vm runs them in a VM.

// requireKernel skips (or, in the test VM, fails) a test without a usable
// kernel nbd driver; it loads the module where it exists.
func requireKernel(t *testing.T) {
	t.Helper()
	testutil.Require(t, testutil.Root)
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Fatalf("mke2fs not found: %v", err)
	}
	err := NewKernelAttacher(tempDir(t), serveFile(t, buildEmpty(t), "probe")).Available(testContext(t))
	testutil.RequireKernelNBD(t, err)
}

// kernelKind runs the attacher suite on the kernel attacher, its exports
// served in-process by fileExportServers.
func kernelKind(opts ...KernelOpt) attacherKind {
	return attacherKind{
		serve: func(t *testing.T, img, _ string) exportServer { return serveFile(t, img, "image") },
		newAttacher: func(t *testing.T, stateDir string, srv exportServer) Attacher {
			a := NewKernelAttacher(stateDir, srv.(*fileExportServer), append([]KernelOpt{KernelConnections(2), KernelTimeouts(5*time.Second, time.Minute)}, opts...)...)
			t.Cleanup(func() { a.Close() })
			return a
		},
		free: assertFree,
	}
}

// assertFree checks that STATUS reports the device free.
func assertFree(t *testing.T, dev *Device) {
	t.Helper()
	n, err := lookupNBDFamily()
	if err != nil {
		t.Fatal(err)
	}
	var index int64
	if _, err := fmt.Sscanf(dev.Path, "/dev/nbd%d", &index); err != nil {
		t.Fatal(err)
	}
	list, err := n.status(index)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].connected {
		t.Errorf("STATUS of %s after Detach: %+v, want free", dev.Path, list)
	}
}

func TestKernelAttacher(t *testing.T) {
	requireKernel(t)
	attacherSuite(t, kernelKind())
}

// TestKernelAttachConcurrent: attaches at once get a device each (the
// kernel picks free devices under its own lock), each reading its own
// image.
func TestKernelAttachConcurrent(t *testing.T) {
	requireKernel(t)
	ctx := testContext(t)
	dir := tempDir(t)
	const n = 6
	srvs := make([]*fileExportServer, n)
	atts := make([]*KernelAttacher, n)
	for i := range n {
		srvs[i] = serveFile(t, buildExt4(t, map[string]string{"id": fmt.Sprint(i)}), "image")
		atts[i] = NewKernelAttacher(filepath.Join(dir, "state"), srvs[i], KernelConnections(1))
		t.Cleanup(func() { atts[i].Close() })
	}
	devs := make([]*Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			devs[i], errs[i] = atts[i].Attach(ctx, srvs[i].Export())
		}()
	}
	close(start)
	wg.Wait()
	paths := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("attach %d: %v", i, errs[i])
		}
		if j, dup := paths[devs[i].Path]; dup {
			t.Fatalf("attaches %d and %d both got %s", i, j, devs[i].Path)
		}
		paths[devs[i].Path] = i
	}
	for i := range n {
		mnt := mountExt4(t, devs[i].Path, filepath.Join(dir, fmt.Sprint("mnt", i)))
		if got := readFile(t, filepath.Join(mnt, "id")); got != fmt.Sprint(i) {
			t.Errorf("%s (attach %d) reads id %q", devs[i].Path, i, got)
		}
		unmount(t, mnt)
		if err := atts[i].Detach(ctx, devs[i]); err != nil {
			t.Error(err)
		}
		assertFree(t, devs[i])
	}
}

// TestKernelReplacesLostConnection: a connection the server loses while
// the agent runs is replaced; the device keeps reading.
func TestKernelReplacesLostConnection(t *testing.T) {
	requireKernel(t)
	ctx := testContext(t)
	dir := tempDir(t)
	srv := serveFile(t, buildExt4(t, map[string]string{"a": "a", "b": strings.Repeat("b", 1<<20)}), "image")
	a := NewKernelAttacher(filepath.Join(dir, "state"), srv, KernelConnections(2), KernelTimeouts(5*time.Second, time.Minute))
	t.Cleanup(func() { a.Close() })
	dev, err := a.Attach(ctx, srv.Export())
	if err != nil {
		t.Fatal(err)
	}
	mnt := mountExt4(t, dev.Path, filepath.Join(dir, "mnt"))
	readFile(t, filepath.Join(mnt, "a"))
	srv.dropOne()
	// The keeper notices at once; the kernel marks the socket dead as it
	// reads the end of it.
	deadline := time.Now().Add(20 * time.Second)
	for srv.active() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections served 20s after one was lost, want 2", srv.active())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := readFile(t, filepath.Join(mnt, "b")); len(got) != 1<<20 {
		t.Errorf("read %d bytes of b", len(got))
	}
	unmount(t, mnt)
	if err := a.Detach(ctx, dev); err != nil {
		t.Fatal(err)
	}
	assertFree(t, dev)
}

// TestKernelDeadDevice: when no agent serves a device past its
// dead-connection timeout, reads fail with EIO instead of hanging; a new
// agent does not adopt it (ErrDeviceDead), and detaches it once unmounted.
func TestKernelDeadDevice(t *testing.T) {
	requireKernel(t)
	ctx := testContext(t)
	dir := tempDir(t)
	img := buildExt4(t, map[string]string{"a": "a", "later": strings.Repeat("l", 1<<20)})
	srv := serveFile(t, img, "image")
	opts := []KernelOpt{KernelConnections(2), KernelTimeouts(2*time.Second, 3*time.Second)}
	a := NewKernelAttacher(filepath.Join(dir, "state"), srv, opts...)
	dev, err := a.Attach(ctx, srv.Export())
	if err != nil {
		t.Fatal(err)
	}
	mnt := mountExt4(t, dev.Path, filepath.Join(dir, "mnt"))
	defer unix.Unmount(mnt, 0)
	readFile(t, filepath.Join(mnt, "a"))
	srv.Stop()
	a.Close()

	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(filepath.Join(mnt, "later"))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("read past the dead-connection timeout: %v, want EIO", err)
		}
		t.Logf("EIO after %v (dead-connection timeout 3s)", time.Since(start).Round(time.Millisecond))
	case <-time.After(60 * time.Second):
		t.Fatal("read still waiting 60s after the agent went away (dead-connection timeout 3s)")
	}

	srv2 := serveFile(t, img, "image")
	a2 := NewKernelAttacher(filepath.Join(dir, "state"), srv2, opts...)
	t.Cleanup(func() { a2.Close() })
	devs, err := a2.Devices(ctx)
	if err != nil || len(devs) != 1 {
		t.Fatalf("Devices = %v, %v; want the dead device", devs, err)
	}
	err = a2.Adopt(ctx, devs[0], srv2.Export())
	if !errors.Is(err, ErrDeviceDead) || !strings.Contains(err.Error(), dev.Path) {
		t.Fatalf("Adopt of the dead device: %v, want ErrDeviceDead naming %s", err, dev.Path)
	}
	if srv2.active() != 0 {
		t.Errorf("the dead device got %d connections", srv2.active())
	}
	unmount(t, mnt)
	if err := a2.Detach(ctx, devs[0]); err != nil {
		t.Fatal(err)
	}
	assertFree(t, dev)
}

// TestKernelBadInput: errors name the device and the cause.
func TestKernelBadInput(t *testing.T) {
	requireKernel(t)
	ctx := testContext(t)
	dir := tempDir(t)
	srv := serveFile(t, buildExt4(t, map[string]string{"a": "a"}), "image")
	a := NewKernelAttacher(filepath.Join(dir, "state"), srv, KernelConnections(1))
	t.Cleanup(func() { a.Close() })
	dev, err := a.Attach(ctx, srv.Export())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Busy", func(t *testing.T) {
		mnt := mountExt4(t, dev.Path, filepath.Join(dir, "mnt"))
		err := a.Detach(ctx, dev)
		if !errors.Is(err, ErrDeviceBusy) || !strings.Contains(err.Error(), dev.Path) || !strings.Contains(err.Error(), mnt) {
			t.Errorf("Detach of a mounted device: %v", err)
		}
		unmount(t, mnt)
		fd, err := unix.Open(dev.Path, unix.O_RDONLY|unix.O_EXCL, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = a.Detach(ctx, dev)
		unix.Close(fd)
		if !errors.Is(err, ErrDeviceBusy) || !strings.Contains(err.Error(), dev.Path) {
			t.Errorf("Detach of a device opened exclusively: %v", err)
		}
	})
	t.Run("AdoptOtherExport", func(t *testing.T) {
		err := a.Adopt(ctx, dev, Export{Name: "other"})
		if err == nil || !strings.Contains(err.Error(), dev.Path) || !strings.Contains(err.Error(), "other") {
			t.Errorf("Adopt to another export: %v", err)
		}
	})
	t.Run("NoPermission", func(t *testing.T) {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(self)
		// A directory the unprivileged user can write in.
		childDir, err := os.MkdirTemp("", "sluice-unprivileged-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(childDir)
		if err := os.Chmod(childDir, 0o777); err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(os.Environ(), childEnv+"=unprivileged-attach", "SLUICE_CHILD_DIR="+childDir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("unprivileged attach: %v\n%s", err, out)
		}
		t.Logf("%s", out)
	})
	if err := a.Detach(ctx, dev); err != nil {
		t.Fatal(err)
	}
	assertFree(t, dev)
}

// unprivilegedAttach runs as an unprivileged user: Available and Attach
// must both say that permission is missing.
func unprivilegedAttach() error {
	ctx := context.Background()
	dir := os.Getenv("SLUICE_CHILD_DIR")
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		return err
	}
	srv := &fileExportServer{name: "image", size: 1 << 20, conns: map[net.Conn]bool{}}
	a := NewKernelAttacher(filepath.Join(dir, "state"), srv)
	err := a.Available(ctx)
	if !errors.Is(err, ErrNoPermission) || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		return fmt.Errorf("Available without privilege: %v, want ErrNoPermission naming CAP_SYS_ADMIN", err)
	}
	fmt.Println("Available:", err)
	_, err = a.Attach(ctx, srv.Export())
	if !errors.Is(err, ErrNoPermission) || !strings.Contains(err.Error(), "image") {
		return fmt.Errorf("Attach without privilege: %v, want ErrNoPermission naming the export", err)
	}
	fmt.Println("Attach:", err)
	return nil
}
