package convert

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// fsck fails the test unless e2fsck finds the image clean.
func fsck(t *testing.T, img string) {
	t.Helper()
	testutil.Require(t, testutil.Tool("e2fsck"))
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, lastLines(out, 30))
	}
}

// mount attaches img read-only to a loop device and mounts it at dir until
// the test ends. The loop device does direct I/O: reads of a sparse export's
// holes then cost no page cache, which makes the 4 GiB case several times
// faster.
func mount(t *testing.T, img, dir string) {
	t.Helper()
	out, err := exec.Command("losetup", "-r", "-f", "--show", "--direct-io=on", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup -r -f --show %s: %v: %s", img, err, bytes.TrimSpace(out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, bytes.TrimSpace(out))
		}
	})
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "ro", dev, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -t ext4 -o ro %s (%s): %v: %s", dev, img, err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, bytes.TrimSpace(out))
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
}

// refOnTmpfs mounts a tmpfs of at most size bytes on the case's reference
// root: extracting many small files into it is several times faster than
// into /var/tmp, and large files written there cost no disk.
func refOnTmpfs(t *testing.T, d caseDirs, size int64) {
	t.Helper()
	opts := fmt.Sprintf("size=%d,mode=0755", size)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", d.ref).CombinedOutput(); err != nil {
		t.Logf("reference stays on disk: mount -t tmpfs: %v: %s", err, bytes.TrimSpace(out))
		return
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", d.ref).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", d.ref, err, bytes.TrimSpace(out))
		}
	})
}
