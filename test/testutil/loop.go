package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireLoop skips the test if a read-only loop device cannot be attached
// (not root, no loop driver, no free device).
func RequireLoop(t testing.TB) {
	t.Helper()
	f, err := os.CreateTemp("", "sluice-loop-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-r", "-f", "--show", f.Name()).CombinedOutput()
	if err != nil {
		t.Skipf("needs loop device support: losetup -r -f --show: %v: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("losetup", "-d", strings.TrimSpace(string(out))).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v: %s", err, out)
	}
}
