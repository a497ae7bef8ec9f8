package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// The processes and loop devices PortableAttacher manages.

// startNbdfuse runs nbdfuse for st in the background and waits until it is
// ready (it writes its pid file then).
func (a *PortableAttacher) startNbdfuse(ctx context.Context, st portableState) error {
	dir, pidFile := a.fuseDir(st.ID), a.pidFile(st.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	os.Remove(pidFile)
	logPath := filepath.Join(a.devDir(st.ID), "nbdfuse.log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := []string{"-r", "-P", pidFile, dir}
	if st.Relay {
		args = append(args, "[", a.nbdkit, "-r", "--exit-with-parent", "--filter=retry", "nbd",
			"socket="+a.link(st.ID), "export="+st.Export.Name,
			"retries="+strconv.Itoa(a.retries), "retry-delay="+strconv.Itoa(a.retryDelay),
			"retry-exponential=no", "]")
	} else {
		args = append(args, nbdURI(st.Export))
	}
	// Not CommandContext: the process must outlive the request that
	// attached it, and the agent too; its own process group keeps signals
	// meant for the agent's group away from it.
	cmd := exec.Command(a.nbdfuse, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nbdfuse: %w", err)
	}
	done := make(chan struct{})
	pid := cmd.Process.Pid
	a.mu.Lock()
	a.children[pid] = done
	a.mu.Unlock()
	go func() {
		cmd.Wait()
		a.mu.Lock()
		delete(a.children, pid)
		a.mu.Unlock()
		close(done)
	}()

	fail := func(err error) error {
		a.stopNbdfuse(context.WithoutCancel(ctx), st.ID)
		out, _ := os.ReadFile(logPath)
		if msg := bytes.TrimSpace(out); len(msg) > 0 {
			return fmt.Errorf("nbdfuse %s: %w: %s", st.Export, err, msg)
		}
		return fmt.Errorf("nbdfuse %s: %w", st.Export, err)
	}
	timeout := time.NewTimer(a.timeout)
	defer timeout.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if readPID(pidFile) > 0 {
			if fi, err := os.Stat(a.fuseFile(st.ID)); err == nil && fi.Mode().IsRegular() {
				return nil
			}
		}
		select {
		case <-done:
			return fail(errors.New("exited before it was ready"))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-timeout.C:
			return fail(fmt.Errorf("not ready after %v", a.timeout))
		case <-tick.C:
		}
	}
}

// stopNbdfuse unmounts the device's FUSE mount, so that nbdfuse exits
// (and its relay with it), and makes sure it has: one that does not is
// killed.
func (a *PortableAttacher) stopNbdfuse(ctx context.Context, id string) error {
	dir := a.fuseDir(id)
	pid := readPID(a.pidFile(id))
	if pid == 0 {
		// Not ready yet when it failed: the pid of a child we started.
		pid = a.childWithArg(dir)
	}
	// The loop driver lets go of the file asynchronously after a detach.
	var err error
	for range 100 {
		if err = unmountIfMounted(dir); !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if errors.Is(err, unix.EBUSY) {
		zerolog.Ctx(ctx).Warn().Str("dir", dir).Msg("FUSE mount still busy; detaching it lazily")
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil {
		return err
	}
	if pid > 0 && !a.waitExit(pid, dir, 5*time.Second) {
		zerolog.Ctx(ctx).Warn().Int("pid", pid).Msg("nbdfuse did not exit after unmount; killing it")
		a.signal(pid, dir, unix.SIGTERM)
		if !a.waitExit(pid, dir, 2*time.Second) {
			a.signal(pid, dir, unix.SIGKILL)
			if !a.waitExit(pid, dir, 2*time.Second) {
				return fmt.Errorf("nbdfuse pid %d does not exit", pid)
			}
		}
	}
	return nil
}

// childWithArg returns the pid of a running nbdfuse child with arg among
// its arguments, or 0.
func (a *PortableAttacher) childWithArg(arg string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	for pid := range a.children {
		if isNbdfuse(pid, arg) {
			return pid
		}
	}
	return 0
}

// waitExit waits until the nbdfuse serving dir with this pid is gone.
func (a *PortableAttacher) waitExit(pid int, dir string, d time.Duration) bool {
	a.mu.Lock()
	done, child := a.children[pid]
	a.mu.Unlock()
	if child {
		select {
		case <-done:
			return true
		case <-time.After(d):
			return false
		}
	}
	deadline := time.Now().Add(d)
	for isNbdfuse(pid, dir) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// signal signals pid only if it still is the nbdfuse serving dir.
func (a *PortableAttacher) signal(pid int, dir string, sig unix.Signal) {
	if isNbdfuse(pid, dir) {
		unix.Kill(pid, sig)
	}
}

// isNbdfuse reports whether pid is a live (not zombie) process with dir
// among its arguments: a recycled pid is never signalled.
func isNbdfuse(pid int, dir string) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if string(arg) == dir {
			return true
		}
	}
	return false
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		return 0
	}
	return pid
}

// nbdURI is exp as an NBD URI (libnbd's syntax).
func nbdURI(exp Export) string {
	return "nbd+unix:///" + uriEscape(exp.Name, false) + "?socket=" + uriEscape(exp.Socket, true)
}

// uriEscape percent-encodes all but unreserved characters (and '/' in
// paths).
func uriEscape(s string, path bool) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', path && c == '/':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func newDeviceID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// loopBackingFile returns the file a loop device reads from, or "" when it
// is not configured.
func loopBackingFile(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
}

// deviceBusy reports whether a block device is claimed exclusively, as by
// a mounted filesystem.
func deviceBusy(dev string) bool {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.EBUSY)
	}
	unix.Close(fd)
	return false
}
