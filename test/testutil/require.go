package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A Need is one prerequisite of a test: root, a tool in PATH, a device, a
// working loop device... Require checks them.
type Need struct {
	// missing returns one line per part of the need that is not met,
	// naming it and saying how to get it; none if it is met.
	missing func() []string
}

// Require fails the test unless every need is met, naming each one that
// is not. Under `make test` (root, after scripts/install-deps.sh) nothing
// may be missing, so a missing prerequisite is a failure, not a skip: a
// skip is only for what this machine kind cannot do (see SkipBecause).
func Require(t testing.TB, needs ...Need) {
	t.Helper()
	var missing []string
	for _, n := range needs {
		missing = append(missing, n.missing()...)
	}
	if len(missing) > 0 {
		t.Fatalf("missing prerequisite(s); under make test (root, after scripts/install-deps.sh) none may be missing:\n\t%s",
			strings.Join(missing, "\n\t"))
	}
}

// Root is running as root (uid 0): mounts, loop devices, containerd.
var Root = Need{func() []string {
	if uid := os.Geteuid(); uid != 0 {
		return []string{fmt.Sprintf("root: running as uid %d; run the tests as root", uid)}
	}
	return nil
}}

// Tool is each of the commands names, found in PATH.
func Tool(names ...string) Need {
	return Need{func() []string {
		var missing []string
		for _, name := range names {
			if _, err := exec.LookPath(name); err != nil {
				missing = append(missing, fmt.Sprintf("tool %s: %v; scripts/install-deps.sh installs it", name, err))
			}
		}
		return missing
	}}
}

// Device is the device node path (e.g. /dev/fuse).
func Device(path string) Need {
	return Need{func() []string {
		if _, err := os.Stat(path); err != nil {
			return []string{fmt.Sprintf("device %s: %v", path, err)}
		}
		return nil
	}}
}

// Loop is a read-only loop device that can be attached: root, the loop
// driver, a free device and losetup. It attaches one to a 1 MiB file and
// detaches it.
var Loop = Need{func() []string {
	fail := func(format string, a ...any) []string {
		return []string{"loop device: " + fmt.Sprintf(format, a...)}
	}
	f, err := os.CreateTemp("", "sluice-loop-probe-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		return fail("%v", err)
	}
	out, err := exec.Command("losetup", "-r", "-f", "--show", f.Name()).CombinedOutput()
	if err != nil {
		return fail("losetup -r -f --show: %v: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("losetup", "-d", strings.TrimSpace(string(out))).CombinedOutput(); err != nil {
		return fail("losetup -d: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}}

// FreeSpace is at least bytes free for an unprivileged user in the
// filesystem of dir.
func FreeSpace(dir string, bytes int64) Need {
	return Need{func() []string {
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			return []string{fmt.Sprintf("free space in %s: %v", dir, err)}
		}
		if free := int64(fs.Bavail) * fs.Bsize; free < bytes {
			return []string{fmt.Sprintf("free space: %d MiB in %s, has %d MiB", bytes>>20, dir, free>>20)}
		}
		return nil
	}}
}

// Check is a need that check tells: met when it returns nil, else missing
// as what, with the error (which should say how to get it).
func Check(what string, check func() error) Need {
	return Need{func() []string {
		if err := check(); err != nil {
			return []string{fmt.Sprintf("%s: %v", what, err)}
		}
		return nil
	}}
}

// Nbdsh is libnbd's nbdsh, able to run: Debian's python3-libnbd is for
// /usr/bin/python3, which nbdsh must find first even where another
// python3 leads PATH (callers run it with /usr/bin first, as here).
var Nbdsh = Need{func() []string {
	if m := Tool("nbdsh").missing(); m != nil {
		return m
	}
	cmd := exec.Command("nbdsh", "--version")
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return []string{fmt.Sprintf("nbdsh does not run (python3-libnbd for /usr/bin/python3; scripts/install-deps.sh installs it): %v: %s",
			err, bytes.TrimSpace(out))}
	}
	return nil
}}
