package imageconv

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

func TestReadAhead(t *testing.T) {
	src := make([]byte, 1<<20+123)
	for i := range src {
		src[i] = byte(rand.Uint32())
	}
	for _, bufSize := range []int{1, 7, 4096, 1 << 20, 2 << 20} {
		ra := newReadAhead(iotest.HalfReader(bytes.NewReader(src)), bufSize, 3)
		var got bytes.Buffer
		// Odd-sized reads, so buffers end mid-read and exactly at a read.
		b := make([]byte, 1000)
		for {
			n, err := ra.Read(b[:1+rand.IntN(len(b))])
			got.Write(b[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		ra.Close()
		if !bytes.Equal(got.Bytes(), src) {
			t.Fatalf("buffer %d: got %d bytes, not the source", bufSize, got.Len())
		}
	}
	boom := errors.New("boom")
	ra := newReadAhead(io.MultiReader(bytes.NewReader(src[:10]), iotest.ErrReader(boom)), 4, 2)
	if _, err := io.ReadAll(ra); !errors.Is(err, boom) {
		t.Fatalf("error %v, want boom", err)
	}
}

// busyReader counts its Reads and says whether one is in progress.
type busyReader struct {
	reading, reads atomic.Int64
}

func (r *busyReader) Read(p []byte) (int, error) {
	r.reading.Add(1)
	defer r.reading.Add(-1)
	time.Sleep(time.Millisecond)
	r.reads.Add(1)
	clear(p)
	return len(p), nil
}

// TestReadAheadCloseWaits: once Close returns, the goroutine reads r no
// more, so the caller may close r (a decompressor) or read it itself.
func TestReadAheadCloseWaits(t *testing.T) {
	r := &busyReader{}
	ra := newReadAhead(r, 512, 4)
	if _, err := io.ReadFull(ra, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	ra.Close()
	if n := r.reading.Load(); n != 0 {
		t.Fatalf("%d Reads of r in progress after Close", n)
	}
	reads := r.reads.Load()
	time.Sleep(20 * time.Millisecond) // time for a goroutine left running to read
	if n := r.reads.Load(); n != reads {
		t.Errorf("r was read %d more times after Close", n-reads)
	}
}
