package leakcheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestFindAndSweep makes one of each (a tmpfs mount, a loop device on a
// file below it, a process naming the dir) and checks that Find sees them
// and Sweep removes them.
func TestFindAndSweep(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.Loop) // mounts, loop devices
	dir := t.TempDir()
	mnt := filepath.Join(dir, "a dir") // a space: mountinfo escapes it
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	img := filepath.Join(mnt, "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-r", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -r -f --show: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	// A shell builtin waiting on its stdin pipe: no child of its own
	// to outlive it.
	sleeper := exec.Command("sh", "-c", "read x", filepath.Join(dir, "marker"))
	stdin, err := sleeper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(reaped) }()
	t.Cleanup(func() { _ = sleeper.Process.Kill() })

	got, err := Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Mounts) != 1 || got.Mounts[0].Point != mnt || got.Mounts[0].FSType != "tmpfs" {
		t.Errorf("mounts: %v, want %s (tmpfs)", got.Mounts, mnt)
	}
	if len(got.Loops) != 1 || got.Loops[0].Device != dev || got.Loops[0].Backing != img {
		t.Errorf("loops: %v, want %s -> %s", got.Loops, dev, img)
	}
	if len(got.Procs) != 1 || got.Procs[0].PID != sleeper.Process.Pid {
		t.Errorf("processes: %v, want %d", got.Procs, sleeper.Process.Pid)
	}
	if _, err := Sweep(dir); err != nil {
		t.Fatal(err)
	}
	<-reaped
	if left, err := Find(dir); err != nil || !left.Empty() {
		t.Fatalf("after Sweep: %v %v", left, err)
	}
	if other, err := Find(filepath.Join(dir, "elsewhere")); err != nil || !other.Empty() {
		t.Errorf("Find of another dir: %v %v", other, err)
	}
}
