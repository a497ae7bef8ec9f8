package serve

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

// shell is one nbdsh process holding ONE NBD connection, driven line by
// line: the test sends a read, may change the proxy's fault while the read
// waits, then collects the answer. Its methods take the (sub)test calling
// them, which they fail.
type shell struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error
}

// readResult is the answer to one read: Errno is 0 on success, when Sum
// is the hex sha256 of the bytes read.
type readResult struct {
	Sum     string
	Errno   int
	Message string
	Elapsed time.Duration
}

// shellScript reads commands ("read OFFSET LENGTH") from stdin and answers
// each with one line: "ok SHA256 SECONDS" or "err ERRNO SECONDS MESSAGE".
const shellScript = `
import hashlib, sys, time
print("ready", h.get_size(), flush=True)
for line in sys.stdin:
    cmd, off, n = line.split()
    t0 = time.monotonic()
    try:
        b = h.pread(int(n), int(off))
    except nbd.Error as e:
        print("err", e.errnum or 0, "%.3f" % (time.monotonic() - t0), str(e.string).replace("\n", " "), flush=True)
    else:
        print("ok", hashlib.sha256(b).hexdigest(), "%.3f" % (time.monotonic() - t0), flush=True)
`

// openShell connects nbdsh to uri and waits until it is connected.
func openShell(t *testing.T, uri string) *shell {
	t.Helper()
	testutil.Require(t, testutil.Nbdsh)
	s := &shell{lines: make(chan string, 16), done: make(chan struct{})}
	s.cmd = exec.Command("nbdsh", "-u", uri, "-c", shellScript)
	s.cmd.Env = toolEnv()
	var stderr strings.Builder
	s.cmd.Stderr = &stderr
	var err error
	if s.in, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		s.err = s.cmd.Wait()
		if s.err != nil {
			s.err = fmt.Errorf("%w: %s", s.err, lastLines(stderr.String(), 10))
		}
		close(s.done)
	}()
	t.Cleanup(func() {
		s.in.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	line := s.line(t, 30*time.Second)
	if !strings.HasPrefix(line, "ready ") {
		t.Fatalf("nbdsh -u %s: %q", uri, line)
	}
	return s
}

// line waits for the next output line.
func (s *shell) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l := <-s.lines:
		return l
	case <-s.done:
		select {
		case l := <-s.lines:
			return l
		default:
		}
		t.Fatalf("nbdsh exited: %v", s.err)
	case <-time.After(timeout):
		t.Fatalf("nbdsh gave no answer within %v", timeout)
	}
	return ""
}

// start sends a read of n bytes at off without waiting for its answer.
func (s *shell) start(t *testing.T, off, n int64) {
	t.Helper()
	if _, err := fmt.Fprintf(s.in, "read %d %d\n", off, n); err != nil {
		t.Fatalf("nbdsh: %v", err)
	}
}

// result waits for the answer to the read started last.
func (s *shell) result(t *testing.T) readResult {
	t.Helper()
	l := s.line(t, time.Minute)
	f := strings.SplitN(l, " ", 4)
	if len(f) < 3 {
		t.Fatalf("nbdsh: unexpected line %q", l)
	}
	secs, err := strconv.ParseFloat(f[2], 64)
	if err != nil {
		t.Fatalf("nbdsh: unexpected line %q", l)
	}
	r := readResult{Elapsed: time.Duration(secs * float64(time.Second))}
	switch f[0] {
	case "ok":
		r.Sum = f[1]
	case "err":
		r.Errno, _ = strconv.Atoi(f[1])
		if len(f) == 4 {
			r.Message = f[3]
		}
		if r.Errno == 0 {
			r.Errno = -1 // an error libnbd gave no errno for
		}
	default:
		t.Fatalf("nbdsh: unexpected line %q", l)
	}
	return r
}

// read reads n bytes at off and waits for the answer.
func (s *shell) read(t *testing.T, off, n int64) readResult {
	t.Helper()
	s.start(t, off, n)
	return s.result(t)
}
