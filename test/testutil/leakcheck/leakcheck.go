// Package leakcheck finds, and removes, what tests (end-to-end ones, and
// unit tests that mount) leave on the host under a directory of theirs:
// mounts (from /proc/self/mountinfo), loop devices (from the kernel's loop
// backing files) and processes (from /proc/PID/cmdline). Everything is
// matched by path, so it only ever sees what a test's own processes made
// under its own temp dir, never another test's or another user's.
package leakcheck

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is a mount point and its filesystem type.
type Mount struct {
	Point  string
	FSType string
}

func (m Mount) String() string { return m.Point + " (" + m.FSType + ")" }

// Mounts returns the mounts at or below dir, in mountinfo order.
func Mounts(dir string) ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		point := unescape(fields[4])
		fstype := ""
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] == "-" {
				fstype = fields[i+1]
				break
			}
		}
		if under(point, dir) {
			out = append(out, Mount{Point: point, FSType: fstype})
		}
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func under(p, dir string) bool {
	dir = filepath.Clean(dir)
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// Loop is a loop device and its backing file.
type Loop struct {
	Device  string // /dev/loopN
	Backing string
}

func (l Loop) String() string { return l.Device + " -> " + l.Backing }

// Loops returns the loop devices whose backing file is below dir.
func Loops(dir string) ([]Loop, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, err
	}
	var out []Loop
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if under(backing, dir) {
			out = append(out, Loop{Device: "/dev/" + e.Name(), Backing: backing})
		}
	}
	return out, nil
}

// Proc is a process and its command line.
type Proc struct {
	PID  int
	Args []string
}

func (p Proc) String() string { return fmt.Sprintf("%d %s", p.PID, strings.Join(p.Args, " ")) }

// Procs returns the processes (other than this one) any of whose arguments
// mentions dir or a path below it.
func Procs(dir string) []Proc {
	dir = filepath.Clean(dir)
	ents, _ := os.ReadDir("/proc")
	var out []Proc
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		for _, a := range args {
			if strings.Contains(a, dir) {
				out = append(out, Proc{PID: pid, Args: args})
				break
			}
		}
	}
	return out
}

// Leaks is what is left below a directory.
type Leaks struct {
	Mounts []Mount
	Loops  []Loop
	Procs  []Proc
}

// Empty reports whether nothing is left.
func (l Leaks) Empty() bool { return len(l.Mounts)+len(l.Loops)+len(l.Procs) == 0 }

func (l Leaks) String() string {
	var b strings.Builder
	for _, m := range l.Mounts {
		fmt.Fprintf(&b, "mount %s\n", m)
	}
	for _, lo := range l.Loops {
		fmt.Fprintf(&b, "loop %s\n", lo)
	}
	for _, p := range l.Procs {
		fmt.Fprintf(&b, "process %s\n", p)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Find returns the mounts, loop devices and processes left below dir.
func Find(dir string) (Leaks, error) {
	var l Leaks
	var err error
	if l.Mounts, err = Mounts(dir); err != nil {
		return l, err
	}
	if l.Loops, err = Loops(dir); err != nil {
		return l, err
	}
	l.Procs = Procs(dir)
	return l, nil
}

// Sweep removes what is left below dir, in an order that lets each step
// succeed: processes other than FUSE servers are killed; mounts other than
// FUSE ones are unmounted, deepest first; loop devices are detached; FUSE
// mounts are unmounted and their servers killed. It returns what it found
// before, and an error if something is still left after.
func Sweep(dir string) (Leaks, error) {
	found, err := Find(dir)
	if err != nil {
		return found, err
	}
	if found.Empty() {
		return found, nil
	}
	var fuseServers []Proc
	for _, p := range found.Procs {
		if strings.HasPrefix(filepath.Base(p.Args[0]), "nbdfuse") || strings.HasPrefix(filepath.Base(p.Args[0]), "nbdkit") {
			fuseServers = append(fuseServers, p)
			continue
		}
		kill(p.PID)
	}
	mounts := found.Mounts
	sort.SliceStable(mounts, func(i, j int) bool { return len(mounts[i].Point) > len(mounts[j].Point) })
	for _, m := range mounts {
		if !strings.HasPrefix(m.FSType, "fuse") {
			unmount(m.Point)
		}
	}
	for _, lo := range found.Loops {
		_ = exec.Command("losetup", "-d", lo.Device).Run()
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.FSType, "fuse") {
			unmount(m.Point)
		}
	}
	for _, p := range fuseServers {
		kill(p.PID)
	}
	var left Leaks
	for range 50 {
		if left, err = Find(dir); err != nil || left.Empty() {
			return found, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return found, errors.New("still left after the sweep:\n" + left.String())
}

func unmount(p string) {
	if err := unix.Unmount(p, 0); err != nil {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}

// kill sends SIGTERM, and SIGKILL if the process is still there after 5 s.
func kill(pid int) {
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		if !Alive(pid) {
			return
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
