package nbdserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// piecesBackend is a FileReader: its bytes are cut into pieces of
// pieceLen, each in a file of its own, except all-zero pieces, which have
// none. It counts the hand-overs it made and those not yet released.
type piecesBackend struct {
	data     []byte
	pieceLen int64
	files    []*os.File // nil: an all-zero piece
	lie      bool       // describe every read one byte short

	handed atomic.Int64
	held   atomic.Int64
}

func newPiecesBackend(t *testing.T, data []byte, pieceLen int64) *piecesBackend {
	t.Helper()
	b := &piecesBackend{data: data, pieceLen: pieceLen}
	dir := t.TempDir()
	for i := int64(0); i*pieceLen < int64(len(data)); i++ {
		p := data[i*pieceLen : min((i+1)*pieceLen, int64(len(data)))]
		if bytes.Count(p, []byte{0}) == len(p) {
			b.files = append(b.files, nil)
			continue
		}
		path := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(path, p, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		b.files = append(b.files, f)
	}
	return b
}

func (b *piecesBackend) Size() int64 { return int64(len(b.data)) }

func (b *piecesBackend) ReadAt(p []byte, off int64) (int, error) {
	return memBackend(b.data).ReadAt(p, off)
}

func (b *piecesBackend) ReadAtFiles(off int64, n int, add func(fd int, off, n int64)) (func(), bool) {
	end := off + int64(n)
	if b.lie {
		end--
	}
	for i := off / b.pieceLen; i*b.pieceLen < end; i++ {
		lo, hi := max(off, i*b.pieceLen), min(end, (i+1)*b.pieceLen)
		fd := -1
		if f := b.files[i]; f != nil {
			fd = int(f.Fd())
		}
		add(fd, lo-i*b.pieceLen, hi-lo)
	}
	b.handed.Add(1)
	b.held.Add(1)
	var once sync.Once
	return func() { once.Do(func() { b.held.Add(-1) }) }, true
}

// filesTestData has zero runs, so replies mix file and zero pieces.
func filesTestData() []byte {
	data := randomBytes(9, 3<<20)
	clear(data[300<<10 : 500<<10]) // pieces 3 and 4 of 100 KiB
	return data
}

// TestFileReplies reads through the sendfile path over unix and TCP
// sockets: large reads of every alignment, across pieces and zero runs,
// pipelined so replies batch; small reads take the buffer path.
func TestFileReplies(t *testing.T) {
	data := filesTestData()
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			b := newPiecesBackend(t, data, 100<<10)
			c := filesClient(t, network, b)
			reads := []struct {
				off    uint64
				length uint32
			}{
				{0, 1 << 20}, {4096, 64 << 10}, {250 << 10, 300 << 10}, {1, 1<<20 - 1},
				{300 << 10, 200 << 10}, {uint64(len(data)) - 1<<20, 1 << 20}, {12345, 4096},
				{1 << 20, 2 << 20}, // beyond the inline limit: the goroutine path
			}
			lens := map[uint64]int{}
			for i, r := range reads {
				c.request(cmdRead, uint64(i), r.off, r.length)
				lens[uint64(i)] = int(r.length)
			}
			for range reads {
				rep := c.reply(lens)
				if rep.errno != 0 {
					t.Fatalf("read %d: errno %d", rep.cookie, rep.errno)
				}
				r := reads[rep.cookie]
				if !bytes.Equal(rep.data, data[r.off:r.off+uint64(r.length)]) {
					t.Fatalf("read %d (%d bytes at %d): wrong bytes", rep.cookie, r.length, r.off)
				}
			}
			// Files were handed over for the six large reads, and every
			// hand-over is released once written.
			if got := b.handed.Load(); got != 6 {
				t.Errorf("%d reads sent from files, want 6", got)
			}
			waitHeld(t, b)
		})
	}
}

// TestFileRepliesMisdescribed: a backend that describes a read's files with
// the wrong length does not desynchronize the stream; the read is served
// from a buffer and the hand-over released.
func TestFileRepliesMisdescribed(t *testing.T) {
	data := filesTestData()
	b := newPiecesBackend(t, data, 100<<10)
	b.lie = true
	c := filesClient(t, "unix", b)
	c.request(cmdRead, 1, 100, 512<<10)
	c.request(cmdRead, 2, 0, 4096)
	lens := map[uint64]int{1: 512 << 10, 2: 4096}
	want := map[uint64][]byte{1: data[100 : 100+512<<10], 2: data[:4096]}
	for range 2 { // in either order: both take the goroutine path
		if r := c.reply(lens); r.errno != 0 || !bytes.Equal(r.data, want[r.cookie]) {
			t.Fatalf("read %d: errno %d or wrong bytes", r.cookie, r.errno)
		}
	}
	waitHeld(t, b)
}

// TestFileRepliesReleasedWhenStreamBreaks: replies queued when a bad
// request ends the connection still release their files.
func TestFileRepliesReleasedWhenStreamBreaks(t *testing.T) {
	b := newPiecesBackend(t, filesTestData(), 100<<10)
	c := filesClient(t, "unix", b)
	var req []byte
	for i := range 3 {
		req = append(req, requestBytes(cmdRead, uint64(i), uint64(i)<<20, 1<<20)...)
	}
	bad := requestBytes(cmdRead, 9, 0, 4096)
	bad[0] ^= 0xff
	c.write(append(req, bad...)) // one write: all buffered before the first reply
	c.expectClosed()
	if b.handed.Load() == 0 {
		t.Fatal("no read was sent from files")
	}
	waitHeld(t, b)
}

// filesClient serves b on a unix or TCP socket and returns a raw client in
// transmission on it.
func filesClient(t *testing.T, network string, b Backend) *rawClient {
	t.Helper()
	s := newServer(t, []Export{{Name: "img", Backend: b}})
	var c net.Conn
	if network == "unix" {
		sock, _ := serveUnix(t, s)
		return handshaken(t, dialRaw(t, sock), b)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(ctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	c, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return handshaken(t, newRawClient(t, c), b)
}

func handshaken(t *testing.T, c *rawClient, b Backend) *rawClient {
	t.Helper()
	if size, _ := c.handshake("img"); size != uint64(b.Size()) {
		t.Fatalf("export size %d, want %d", size, b.Size())
	}
	return c
}

// waitHeld waits until b's hand-overs are all released: a liveness bound,
// not a timing assertion.
func waitHeld(t *testing.T, b *piecesBackend) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); b.held.Load() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d file hand-overs never released", b.held.Load())
		}
	}
}
