package nbdserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// memBackend serves a byte slice.
type memBackend []byte

func (m memBackend) Size() int64 { return int64(len(m)) }

func (m memBackend) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m)) {
		return 0, errors.New("memBackend: offset out of range")
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, errors.New("memBackend: short read")
	}
	return n, nil
}

// fileBackend serves a file.
type fileBackend struct {
	f    *os.File
	size int64
}

func (b fileBackend) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }
func (b fileBackend) Size() int64                             { return b.size }

// failingBackend fails every read that touches [badOff, badOff+badLen).
type failingBackend struct {
	Backend
	badOff, badLen int64
}

func (b failingBackend) ReadAt(p []byte, off int64) (int, error) {
	if off < b.badOff+b.badLen && off+int64(len(p)) > b.badOff {
		return 0, fmt.Errorf("injected failure at %d+%d", off, len(p))
	}
	return b.Backend.ReadAt(p, off)
}

// gatedBackend blocks reads at offsets in gates until the gate's channel is
// closed.
type gatedBackend struct {
	Backend
	gates map[int64]chan struct{}
}

func (b gatedBackend) ReadAt(p []byte, off int64) (int, error) {
	if g, ok := b.gates[off]; ok {
		<-g
	}
	return b.Backend.ReadAt(p, off)
}

// countingBackend records the most bytes being read at once.
type countingBackend struct {
	Backend
	delay   time.Duration
	cur     atomic.Int64
	maxSeen atomic.Int64
}

func (b *countingBackend) ReadAt(p []byte, off int64) (int, error) {
	now := b.cur.Add(int64(len(p)))
	for {
		m := b.maxSeen.Load()
		if now <= m || b.maxSeen.CompareAndSwap(m, now) {
			break
		}
	}
	time.Sleep(b.delay)
	defer b.cur.Add(-int64(len(p)))
	return len(p), nil // contents do not matter to this backend's tests
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// writeImage writes data to a file in dir and returns a backend for it.
func writeImage(t *testing.T, dir string, data []byte) (string, Backend) {
	t.Helper()
	path := filepath.Join(dir, "src.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return path, fileBackend{f: f, size: int64(len(data))}
}

func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// serveUnix serves s on a unix socket in a temporary directory until the
// test ends, and returns the socket's path.
func serveUnix(t *testing.T, s *Server) (string, *countingListener) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: ul}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(ctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return sock, l
}

func newServer(t testing.TB, exports []Export, opts ...Option) *Server {
	t.Helper()
	s, err := New(exports, append([]Option{WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func nbdURI(export, sock string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, sock)
}

// run runs a command with a deadline and returns its stdout; it fails the
// test on a non-zero exit.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// Debian's python3-libnbd is for /usr/bin/python3, which nbdsh must find
	// first even where another python3 leads PATH.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return append(out, stderr.b...), err
	}
	return out, nil
}

type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// socketPair returns the two ends of a connected unix stream socket pair,
// like those handed to the kernel's nbd driver.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("socketpair-%d", i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}
