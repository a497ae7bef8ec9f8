package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testutil"
)

// exportServer serves an ext4 image as an export for the attacher suite;
// Stop stands for the agent going away.
type exportServer interface {
	Export() Export
	Stop()
}

// attacherKind is how the attacher suite runs one Attacher
// implementation.
type attacherKind struct {
	// serve serves the ext4 image img as an export, on socket sock if it
	// is not "" (the socket of an earlier server, after a restart).
	serve func(t *testing.T, img, sock string) exportServer
	// newAttacher returns an attacher keeping its state in stateDir,
	// attaching the exports of srv. Two calls with the same directory
	// stand for an agent and the same agent after a restart.
	newAttacher func(t *testing.T, stateDir string, srv exportServer) Attacher
	// free, if not nil, checks that a detached device is free again.
	free func(t *testing.T, dev *Device)
}

// attacherSuite is the test every Attacher passes (the kernel attacher in
// the kernel-NBD VM).
func attacherSuite(t *testing.T, kind attacherKind) {
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB, read only after a restart
	tree := map[string]string{"hello.txt": "hello\n", "etc/os-release": "ID=sluice\n", "later.bin": big}

	t.Run("AttachMountReadDetach", func(t *testing.T) {
		ctx := testContext(t)
		dir := tempDir(t)
		k := kind.serve(t, buildExt4(t, tree), "")
		a := kind.newAttacher(t, filepath.Join(dir, "state"), k)
		dev, err := a.Attach(ctx, k.Export())
		if err != nil {
			t.Fatal(err)
		}
		mnt := mountExt4(t, dev.Path, filepath.Join(dir, "mnt"))
		if got := readFile(t, filepath.Join(mnt, "hello.txt")); got != "hello\n" {
			t.Errorf("hello.txt = %q", got)
		}
		if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write to the read-only mount: %v, want EROFS", err)
		}
		if err := a.Detach(ctx, dev); err == nil {
			t.Error("Detach of a mounted device succeeded")
		} else if !strings.Contains(err.Error(), dev.Path) {
			t.Errorf("Detach of a mounted device: %v (does not name %s)", err, dev.Path)
		}
		unmount(t, mnt)
		if err := a.Detach(ctx, dev); err != nil {
			t.Fatal(err)
		}
		assertNoLeaks(t, dir)
		if kind.free != nil {
			kind.free(t, dev)
		}
		if devs, err := a.Devices(ctx); err != nil || len(devs) != 0 {
			t.Errorf("Devices after Detach = %v, %v", devs, err)
		}
	})

	// The agent restarts: its NBD server goes away and comes back, on the
	// same socket or another one, while the device stays mounted.
	for _, sameSocket := range []bool{true, false} {
		name := map[bool]string{true: "RestartSameSocket", false: "RestartNewSocket"}[sameSocket]
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t)
			dir := tempDir(t)
			img := buildExt4(t, tree)
			k := kind.serve(t, img, "")
			a := kind.newAttacher(t, filepath.Join(dir, "state"), k)
			dev, err := a.Attach(ctx, k.Export())
			if err != nil {
				t.Fatal(err)
			}
			mnt := mountExt4(t, dev.Path, filepath.Join(dir, "mnt"))
			defer unix.Unmount(mnt, 0)
			readFile(t, filepath.Join(mnt, "hello.txt"))

			k.Stop()
			// A container reads while the server is down: the read waits.
			read := make(chan string, 1)
			go func() {
				b, err := os.ReadFile(filepath.Join(mnt, "later.bin"))
				if err != nil {
					read <- "error: " + err.Error()
					return
				}
				read <- string(b)
			}()
			time.Sleep(1500 * time.Millisecond)
			sock := ""
			if sameSocket {
				sock = k.Export().Socket
			}
			k2 := kind.serve(t, img, sock)
			a2 := kind.newAttacher(t, filepath.Join(dir, "state"), k2)
			devs, err := a2.Devices(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(devs) != 1 || devs[0].Path != dev.Path || devs[0].ID != dev.ID {
				t.Fatalf("Devices after restart = %+v, want the one at %s", devs, dev.Path)
			}
			if err := a2.Adopt(ctx, devs[0], k2.Export()); err != nil {
				t.Fatal(err)
			}
			select {
			case got := <-read:
				if got != big {
					t.Errorf("read across the restart: %.80q, not the file", got)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("read across the restart still waiting")
			}
			if got := readFile(t, filepath.Join(mnt, "etc/os-release")); got != tree["etc/os-release"] {
				t.Errorf("etc/os-release after adoption = %q", got)
			}
			if n := countMounts(t, mnt); n != 1 {
				t.Errorf("%s mounted %d times", mnt, n)
			}
			unmount(t, mnt)
			if err := a2.Detach(ctx, devs[0]); err != nil {
				t.Fatal(err)
			}
			assertNoLeaks(t, dir)
			if kind.free != nil {
				kind.free(t, dev)
			}
		})
	}
}

func TestPortableAttacher(t *testing.T) {
	testutil.RequirePortable(t, "mke2fs")
	attacherSuite(t, attacherKind{
		serve: func(t *testing.T, img, sock string) exportServer {
			if sock == "" {
				return startNbdkit(t, img)
			}
			return startNbdkitAt(t, img, sock)
		},
		newAttacher: func(t *testing.T, stateDir string, _ exportServer) Attacher {
			return NewPortableAttacher(stateDir)
		},
	})
}

// TestPortableAttacherForgetsGoneDevices: a device detached behind the
// agent's back is not listed after a restart, and what is left of it (the
// nbdfuse process, its mount) is cleaned up.
func TestPortableAttacherForgetsGoneDevices(t *testing.T) {
	testutil.RequirePortable(t, "mke2fs")
	tree := map[string]string{"hello.txt": "hello\n"}
	ctx := testContext(t)
	dir := tempDir(t)
	k := startNbdkit(t, buildExt4(t, tree))
	a := NewPortableAttacher(filepath.Join(dir, "state"))
	dev, err := a.Attach(ctx, k.export)
	if err != nil {
		t.Fatal(err)
	}
	// Someone detached the device behind the agent's back.
	if out, err := exec.Command("losetup", "-d", dev.Path).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("No such device")) {
		t.Logf("losetup -d %s: %v: %s", dev.Path, err, out)
	}
	waitUntilDetached(t, dev.Path, dir)
	devs, err := NewPortableAttacher(filepath.Join(dir, "state")).Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 0 {
		t.Errorf("Devices = %+v, want none", devs)
	}
	assertNoLeaks(t, dir)
}

func TestPortableAttacherBadExport(t *testing.T) {
	testutil.RequirePortable(t, "mke2fs")
	ctx := testContext(t)
	dir := tempDir(t)
	a := NewPortableAttacher(filepath.Join(dir, "state"))
	_, err := a.Attach(ctx, Export{Socket: filepath.Join(dir, "nobody-listens.sock")})
	if err == nil {
		t.Fatal("Attach to a socket nobody listens on succeeded")
	}
	t.Logf("error (as expected): %v", err)
	assertNoLeaks(t, dir)
	if entries, _ := os.ReadDir(filepath.Join(dir, "state")); len(entries) != 0 {
		t.Errorf("state left behind: %v", entries)
	}
}

func TestSelectAttacher(t *testing.T) {
	ctx := context.Background()
	unavailable := &fakeAttacher{name: "kernel", unavailable: errors.New("nbd generic netlink family not found")}
	portable := &fakeAttacher{name: "portable"}
	a, why, err := SelectAttacher(ctx, unavailable, portable)
	if err != nil || a != portable {
		t.Fatalf("SelectAttacher = %v, %v", a, err)
	}
	if !strings.Contains(why, "kernel unavailable: nbd generic netlink family not found") || !strings.Contains(why, "using portable") {
		t.Errorf("why = %q", why)
	}
	if _, why, err := SelectAttacher(ctx, unavailable); !errors.Is(err, ErrNoAttacher) || !strings.Contains(why, "kernel") {
		t.Errorf("SelectAttacher(unavailable) = %q, %v", why, err)
	}
}

type fakeAttacher struct {
	Attacher
	name        string
	unavailable error
}

func (f *fakeAttacher) Name() string                      { return f.name }
func (f *fakeAttacher) Available(_ context.Context) error { return f.unavailable }

func mountExt4(t *testing.T, dev, mnt string) string {
	t.Helper()
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	return mnt
}

func unmount(t *testing.T, mnt string) {
	t.Helper()
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount %s: %v", mnt, err)
	}
}

func countMounts(t *testing.T, mnt string) int {
	t.Helper()
	points, err := mountsUnder(mnt)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range points {
		if p == mnt {
			n++
		}
	}
	return n
}

func waitUntilDetached(t *testing.T, dev, dir string) {
	t.Helper()
	for range 500 {
		if !strings.HasPrefix(loopBackingFile(dev), dir) {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 10e6}, nil)
	}
	t.Fatalf("%s still attached", dev)
}
