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

// AddTree adds the files, directories and symbolic links below the host
// directory src under dst, with their permissions.
func AddTree(a *Archive, dst, src string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			a.Dir(to, uint32(info.Mode().Perm()))
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			a.Symlink(to, target)
		case d.Type().IsRegular():
			a.File(to, p, uint32(info.Mode().Perm()))
		default:
			return fmt.Errorf("%s: not a file, directory or symbolic link", p)
		}
		return nil
	})
}
