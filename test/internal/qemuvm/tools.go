package qemuvm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// AddBusybox adds /bin/busybox (Debian's busybox-static) and a link for
// each of its applets in /bin, where none exists yet.
func AddBusybox(a *Archive) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("%w: busybox (Debian package busybox-static): %v", ErrMissing, err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	a.File("bin/busybox", bb, 0o755)
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if _, ok := a.entries["bin/"+applet]; !ok {
			a.Symlink("bin/"+applet, "busybox")
		}
	}
	return nil
}

// AddDynamic adds host executables with the shared libraries they load
// (as ldd lists them, and the dynamic loader) at the same paths.
func AddDynamic(a *Archive, bins ...string) error {
	for _, bin := range bins {
		p, err := exec.LookPath(bin)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrMissing, bin, err)
		}
		if p, err = filepath.EvalSymlinks(p); err != nil {
			return err
		}
		a.File(p, p, 0o755)
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			if bytes.Contains(out, []byte("not a dynamic executable")) {
				continue
			}
			return fmt.Errorf("ldd %s: %w", p, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			var lib string
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				lib = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				lib = f[0] // the dynamic loader
			default:
				continue
			}
			real, err := filepath.EvalSymlinks(lib)
			if err != nil {
				return err
			}
			a.File(lib, real, 0o755)
		}
	}
	return nil
}

// AddHostFile adds a host file at its own path (a tool's configuration).
func AddHostFile(a *Archive, p string) error {
	if _, err := os.Stat(p); err != nil {
		return err
	}
	a.File(p, p, 0o644)
	return nil
}
