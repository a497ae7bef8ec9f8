package serve

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestMountThroughNbdfuse is the portable attach chain: nbdfuse exposes
// the export as a file, losetup -r makes it a block device, and the ext4
// mounted read-only from it holds the files put in the image, with the
// same sha256, and not the file the upper layer deleted.
func TestMountThroughNbdfuse(t *testing.T) {
	// Root attaches a loop device and mounts ext4; nbdfuse needs FUSE.
	testutil.Require(t, testutil.Root, testutil.Device("/dev/fuse"),
		testutil.Tool("nbdfuse", "losetup", "mount", "umount"), testutil.Loop)
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	dir := shortTempDir(t)
	fuseDir, mnt := filepath.Join(dir, "fuse"), filepath.Join(dir, "mnt")
	for _, d := range []string{fuseDir, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	file := startNbdfuse(t, fuseDir, srv.uri(e.image))
	if fi, err := os.Stat(file); err != nil {
		t.Fatal(err)
	} else if fi.Size() != int64(len(e.ref)) {
		t.Errorf("nbdfuse file %s has %d bytes, want %d", file, fi.Size(), len(e.ref))
	}

	dev := strings.TrimSpace(string(mustRun(t, time.Minute, "losetup", "-r", "-f", "--show", file)))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, bytes.TrimSpace(out))
		}
	})
	mustRun(t, time.Minute, "mount", "-t", "ext4", "-o", "ro", dev, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, bytes.TrimSpace(out))
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})

	paths := make([]string, 0, len(e.files))
	for p := range e.files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join(mnt, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.files[p] {
			t.Errorf("%s: sha256 %x, want %s", p, sum, e.files[p])
		}
	}
	for _, p := range e.gone {
		if _, err := os.Lstat(filepath.Join(mnt, p)); !os.IsNotExist(err) {
			t.Errorf("%s was deleted by the upper layer but is in the mount (err %v)", p, err)
		}
	}
	t.Logf("%d files checked through nbdfuse + %s", len(paths), dev)
}

// startNbdfuse runs nbdfuse -r on dir for uri until the test ends, and
// returns the file it exposes. It waits for nbdfuse's pid file, written
// once it serves.
func startNbdfuse(t *testing.T, dir, uri string) string {
	t.Helper()
	pidFile := filepath.Join(t.TempDir(), "nbdfuse.pid")
	cmd := exec.Command("nbdfuse", "-r", "-P", pidFile, dir, uri)
	cmd.Env = toolEnv()
	stderr := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		// Unmount, which ends nbdfuse; kill it by PID only if it lingers.
		unmount := exec.Command("fusermount3", "-u", dir)
		if _, err := exec.LookPath("fusermount3"); err != nil {
			unmount = exec.Command("umount", dir)
		}
		if out, err := unmount.CombinedOutput(); err != nil {
			t.Errorf("%s: %v: %s", strings.Join(unmount.Args, " "), err, bytes.TrimSpace(out))
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("nbdfuse (pid %d) still running 10 s after unmount; killing it", cmd.Process.Pid)
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			return filepath.Join(dir, "nbd")
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("nbdfuse exited before serving: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse wrote no pid file within 30 s:\n%s", stderr.String())
		}
	}
}
