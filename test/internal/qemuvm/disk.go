package qemuvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Overlay makes path (named *.qcow2) a copy-on-write disk over the raw
// image base: the guest reads base and writes only to path, so that a
// cached image stays as it was built, and one overlay can be booted
// several times (a reboot of the same disk). It replaces path.
func Overlay(ctx context.Context, base, path string) error {
	if !strings.HasSuffix(path, ".qcow2") {
		return fmt.Errorf("overlay %s: want a name ending in .qcow2", path)
	}
	img, err := exec.LookPath("qemu-img")
	if err != nil {
		return fmt.Errorf("%w: qemu-img (Debian package qemu-utils; scripts/install-deps.sh installs it): %v", ErrMissing, err)
	}
	base, err = filepath.Abs(base)
	if err != nil {
		return err
	}
	os.Remove(path)
	if out, err := exec.CommandContext(ctx, img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, path).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create %s over %s: %v: %s", path, base, err, out)
	}
	return nil
}
