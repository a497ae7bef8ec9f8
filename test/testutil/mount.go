package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
)

// MountRootfs mounts a snapshot's mounts at dir/rootfs, as a container's
// root filesystem, and returns it with the function that unmounts it (call
// it before the snapshot is removed; a failed unmount fails the test).
func MountRootfs(t testing.TB, dir string, mounts []mount.Mount) (target string, unmount func()) {
	t.Helper()
	target = filepath.Join(dir, "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %+v: %v", mounts, err)
	}
	return target, func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	}
}
