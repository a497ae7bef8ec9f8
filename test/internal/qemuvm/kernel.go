package qemuvm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is a kernel image to boot and its modules.
type Kernel struct {
	// Version is its release, as uname -r prints it.
	Version string
	// Image is the bootable image, /boot/vmlinuz-VERSION.
	Image string
	// Modules is /lib/modules/VERSION.
	Modules string
}

// ErrMissing says a tool or file the VM tests need is not installed; its
// message names the Debian package.
var ErrMissing = errors.New("missing")

// FindKernel returns the newest kernel in /boot that has the nbd module:
// Debian's linux-image-amd64 installs one.
func FindKernel() (Kernel, error) {
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(images)))
	for _, img := range images {
		v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		mods := filepath.Join("/lib/modules", v)
		if _, err := os.Stat(filepath.Join(mods, "kernel/drivers/block/nbd.ko")); err != nil {
			continue
		}
		f, err := os.Open(img)
		if err != nil {
			return Kernel{}, fmt.Errorf("kernel image %s: %w", img, err)
		}
		f.Close()
		return Kernel{Version: v, Image: img, Modules: mods}, nil
	}
	return Kernel{}, fmt.Errorf("%w: no /boot/vmlinuz-* with the nbd module in /lib/modules (Debian package linux-image-amd64; scripts/install-deps.sh installs it)", ErrMissing)
}

// QEMU returns the path of qemu-system-x86_64.
func QEMU() (string, error) {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("%w: qemu-system-x86_64 (Debian package qemu-system-x86; scripts/install-deps.sh installs it): %v", ErrMissing, err)
	}
	return p, nil
}

// moduleDeps returns the modules (paths relative to the modules
// directory) needed to load the named modules, dependencies first, from
// modules.dep.
func (k Kernel) moduleDeps(names ...string) ([]string, error) {
	f, err := os.Open(filepath.Join(k.Modules, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // module path -> its dependencies
	byName := map[string]string{} // module name -> path
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(filepath.Base(mod), ".ko")
		name = strings.TrimSuffix(name, ".ko.xz")
		byName[strings.ReplaceAll(name, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(mod string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		for _, d := range deps[mod] {
			visit(d)
		}
		order = append(order, mod)
	}
	for _, n := range names {
		mod, ok := byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			return nil, fmt.Errorf("kernel %s has no module %s", k.Version, n)
		}
		visit(mod)
	}
	return order, nil
}

// AddModules puts the named modules and their dependencies in a under
// /lib/modules/VERSION, with a modules.dep listing just them, so that the
// guest's modprobe (busybox) loads them by name.
func (k Kernel) AddModules(a *Archive, names ...string) error {
	mods, err := k.moduleDeps(names...)
	if err != nil {
		return err
	}
	all, err := os.ReadFile(filepath.Join(k.Modules, "modules.dep"))
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, m := range mods {
		want[m] = true
		a.File(filepath.Join("lib/modules", k.Version, m), filepath.Join(k.Modules, m), 0o644)
	}
	var dep strings.Builder
	for _, line := range strings.Split(string(all), "\n") {
		if mod, _, ok := strings.Cut(line, ":"); ok && want[mod] {
			dep.WriteString(line + "\n")
		}
	}
	a.Bytes(filepath.Join("lib/modules", k.Version, "modules.dep"), []byte(dep.String()), 0o644)
	return nil
}
