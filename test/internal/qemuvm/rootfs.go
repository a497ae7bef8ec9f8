package qemuvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// MirrorEnv overrides the Debian mirror debootstrap uses.
const MirrorEnv = "SLUICE_VM_DEBIAN_MIRROR"

// Rootfs is a Debian root filesystem built with debootstrap (minbase plus
// Include), completed by Populate, and made into a raw ext4 disk image
// with FreeMiB to spare. It holds no kernel: guests boot the host's
// (Kernel) with its modules, which AddModules copies in.
type Rootfs struct {
	Suite   string // e.g. "bookworm"
	Include []string
	// Populate adds to the tree, as root (registry storage, configs).
	Populate func(ctx context.Context, dir string) error
	// Recipe names what Populate does: change it when Populate changes,
	// so that the cache key does.
	Recipe  string
	FreeMiB int
}

// mirror is the Debian mirror: $SLUICE_VM_DEBIAN_MIRROR, else Debian's
// CDN, which apt reaches from the machines this project runs on.
func mirror() string {
	if m := os.Getenv(MirrorEnv); m != "" {
		return m
	}
	return "http://deb.debian.org/debian"
}

// key hashes the recipe's inputs.
func (r Rootfs) key(k Kernel) string {
	inc := append([]string(nil), r.Include...)
	sort.Strings(inc)
	h := sha256.Sum256([]byte(strings.Join([]string{"rootfs-1", r.Suite, mirror(), strings.Join(inc, ","), r.Recipe, fmt.Sprint(r.FreeMiB), k.Version}, "\x00")))
	return hex.EncodeToString(h[:])[:16]
}

// Image returns the cached disk image, building it first if needed (a
// few minutes: debootstrap downloads the packages).
func (r Rootfs) Image(ctx context.Context, cacheDir, name string, k Kernel) (string, error) {
	for _, tool := range []string{"debootstrap", "mke2fs", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%w: %s (scripts/install-deps.sh installs it): %v", ErrMissing, tool, err)
		}
	}
	return Cached(cacheDir, name+"-"+r.key(k)+".img", func(tmp string) error {
		dir := tmp + ".root"
		os.RemoveAll(dir)
		defer os.RemoveAll(dir)
		args := []string{"--variant=minbase"}
		if len(r.Include) > 0 {
			args = append(args, "--include="+strings.Join(r.Include, ","))
		}
		args = append(args, r.Suite, dir, mirror())
		if out, err := exec.CommandContext(ctx, "debootstrap", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("debootstrap %s: %v\n%s", strings.Join(args, " "), err, tail(string(out), 30))
		}
		// The downloaded packages are of no use in the image.
		debs, _ := filepath.Glob(filepath.Join(dir, "var/cache/apt/archives/*.deb"))
		for _, d := range debs {
			os.Remove(d)
		}
		if err := k.installModules(dir, BaseModules...); err != nil {
			return err
		}
		if r.Populate != nil {
			if err := r.Populate(ctx, dir); err != nil {
				return err
			}
		}
		out, err := exec.CommandContext(ctx, "du", "-sm", dir).Output()
		if err != nil {
			return fmt.Errorf("du %s: %w", dir, err)
		}
		var used int
		fmt.Sscan(string(out), &used)
		size := fmt.Sprintf("%dM", used+used/5+r.FreeMiB)
		if out, err := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "sluice-node", "-d", dir, tmp, size).CombinedOutput(); err != nil {
			return fmt.Errorf("mke2fs -d %s: %v: %s", dir, err, out)
		}
		return nil
	})
}

// installModules copies the named modules (and their dependencies) into
// the root filesystem at dir and indexes them with depmod, so that the
// guest's modprobe (kmod) loads them.
func (k Kernel) installModules(dir string, names ...string) error {
	mods, err := k.moduleDeps(names...)
	if err != nil {
		return err
	}
	for _, m := range mods {
		dst := filepath.Join(dir, "lib/modules", k.Version, m)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(k.Modules, m))
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if b, err := os.ReadFile(filepath.Join(k.Modules, f)); err == nil {
			os.WriteFile(filepath.Join(dir, "lib/modules", k.Version, f), b, 0o644)
		}
	}
	if out, err := exec.Command("depmod", "-b", dir, k.Version).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod -b %s %s: %v: %s", dir, k.Version, err, out)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
