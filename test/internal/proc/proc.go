// Package proc runs the helper processes of end-to-end tests (registry,
// containerd, sluiced): it watches a started process's exit, stops it by
// its PID (SIGTERM, then SIGKILL after a grace period), reads the tail of
// its log, and finds free loopback ports for it to listen on.
package proc

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a started process whose exit is watched.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
}

// Start starts cmd and waits for it in the background.
func Start(cmd *exec.Cmd) (*Proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed once the process has exited (Cmd.ProcessState is set).
func (p *Proc) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM (by PID) and waits for the process to exit; if it has
// not within grace, it sends SIGKILL, waits, and returns false.
func (p *Proc) Stop(grace time.Duration) bool {
	if !p.Running() {
		return true
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.done
		return false
	}
}

// LogTail returns the last n lines of the file at path, or the error
// reading it.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	a, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("not a TCP address")
	}
	return a.Port, nil
}
