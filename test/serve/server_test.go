package serve

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveOpts adjusts one `sluice serve` run. By default it serves e.image
// from a fresh cache with --background-rate 0 and --read-timeout 3s, and
// fetches nothing a read does not ask for (--readahead 0
// --metadata-first=false): tests that inject faults into one chunk's
// fetch, or count them, read the chunks they mean.
type serveOpts struct {
	images   []string // default: e.image
	cacheDir string   // default: a new directory
	sock     string   // default: a new path
	tcp      string   // --tcp, if set
	args     []string // more flags; they come last, so they override the defaults
}

// readTimeout is the --read-timeout tests serve with unless they say
// otherwise.
const readTimeout = 3 * time.Second

// outage is how long the "back within the deadline" cases keep the
// registry down: long enough for several refused attempts, short enough
// that a retry after it (the default backoff retries about 0.1, 0.3, 0.7
// and 1.5 s after the first attempt, each ±20%) falls well inside
// readTimeout even on a loaded machine.
const outage = 600 * time.Millisecond

// server is a running `sluice serve` subprocess.
type server struct {
	t        *testing.T
	cmd      *exec.Cmd
	sock     string
	cacheDir string
	logPath  string
	done     chan struct{}
	waitErr  error
}

// startServer runs `sluice serve` and waits until its unix socket accepts
// connections. The server is stopped (SIGTERM, then SIGKILL) when the test
// ends, and its log printed if the test failed.
func (e *env) startServer(t *testing.T, o serveOpts) *server {
	t.Helper()
	dir := shortTempDir(t)
	if o.cacheDir == "" {
		o.cacheDir = filepath.Join(dir, "cache")
	}
	if len(o.images) == 0 {
		o.images = []string{e.image}
	}
	if o.sock == "" {
		o.sock = filepath.Join(dir, "nbd.sock")
	}
	s := &server{t: t, sock: o.sock, cacheDir: o.cacheDir, logPath: filepath.Join(dir, "serve.log"), done: make(chan struct{})}
	args := []string{"serve", "--plain-http", "--log-level", "debug",
		"--socket", s.sock, "--cache-dir", o.cacheDir, "--cache-size", "1GiB",
		"--background-rate", "0", "--read-timeout", readTimeout.String(),
		"--readahead", "0", "--metadata-first=false"}
	if o.tcp != "" {
		args = append(args, "--tcp", o.tcp)
	}
	args = append(args, o.args...)
	args = append(args, o.images...)
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s.cmd = exec.Command(e.sluice, args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if raceBuild && os.Getenv("GORACE") == "" {
		// The race runtime sleeps 1 s before exiting by default; stopping
		// a dozen servers need not take a dozen seconds.
		s.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=100")
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.waitErr = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		if s.running() {
			if err := s.stop(); err != nil {
				t.Errorf("stopping sluice serve: %v", err)
			}
		}
		if log, err := os.ReadFile(s.logPath); err == nil && strings.Contains(string(log), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in sluice serve; its log: %s", s.logPath)
			keepLog(t, s.logPath)
		}
		if t.Failed() {
			t.Logf("sluice serve %s log (last lines):\n%s", strings.Join(args, " "), s.logTail(40))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", s.sock); err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("sluice serve exited during startup: %v\n%s", s.waitErr, s.logTail(30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sluice serve did not listen on %s within 30 s:\n%s", s.sock, s.logTail(30))
		}
	}
}

func (s *server) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits; it returns the exit error, if any.
func (s *server) stop() error {
	if !s.running() {
		return s.waitErr
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.waitErr
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("did not exit within 15 s of SIGTERM; killed")
	}
}

// kill9 kills the server with SIGKILL and waits for it to be gone.
func (s *server) kill9() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		s.t.Fatalf("kill -9 %d: %v", s.cmd.Process.Pid, err)
	}
	<-s.done
}

func (s *server) logTail(n int) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}

// uri is the NBD URI of export name (empty: the default export) on the
// server's unix socket.
func (s *server) uri(export string) string { return nbdUnixURI(export, s.sock) }

func nbdUnixURI(export, sock string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, sock)
}

// keepLog copies a log that a failure report points at out of the test's
// temporary directories, and says where.
func keepLog(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	f, err := os.CreateTemp("", "sluice-serve-*.log")
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Write(b); err == nil {
		t.Logf("log kept as %s", f.Name())
	}
}
