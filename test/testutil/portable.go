package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequirePortable skips the test unless it runs as root with FUSE and
// loop devices, what the portable attach (nbdfuse -> losetup -r) needs to
// mount an image; a missing tool (nbdkit, nbdfuse, losetup, then tools)
// fails it, as scripts/install-deps.sh installs them.
func RequirePortable(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts ext4, overlayfs, FUSE and loop devices")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	for _, bin := range append([]string{"nbdkit", "nbdfuse", "losetup"}, tools...) {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found (scripts/install-deps.sh installs it): %v", bin, err)
		}
	}
}
