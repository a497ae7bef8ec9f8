package blockcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReadWholeImage(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	size := im.Size()
	if size != int64(len(e.f.want)) {
		t.Fatalf("Size() = %d, exported image is %d bytes", size, len(e.f.want))
	}
	// Reads of every shape, like a kernel's: aligned 4 KiB, 128 KiB
	// readahead, unaligned, across chunk boundaries.
	rng := rand.New(rand.NewPCG(3, 4))
	for off := int64(0); off < size; {
		n := []int64{4096, 128 << 10, 1, 70000, 3 << 20}[rng.IntN(5)]
		n = min(n, size-off)
		e.read(im, off, n)
		off += n
	}
	s := im.Stats()
	ix := e.art.Index
	if s.BytesFetched != ix.StoredBytes() {
		t.Errorf("fetched %d bytes, the distinct stored chunks are %d", s.BytesFetched, ix.StoredBytes())
	}
	if s.ChunksPresent != s.ChunksTotal || s.PercentComplete != 100 || s.ChunksZero != ix.ZeroChunks() {
		t.Errorf("stats after reading everything: %+v", s)
	}
	if s.ChunksZero == 0 {
		t.Error("the fixture has no zero chunks: zero chunks untested")
	}
	if s.CacheMisses == 0 || s.FaultLatency.Count == 0 {
		t.Errorf("no faults counted: %+v", s)
	}

	// Everything is cached now: a second image on the same store reads with
	// the registry gone.
	e.faults.set(func(h *faultHandler) { h.drop = -1 })
	im2 := e.open(WithReadTimeout(time.Second))
	got := make([]byte, size)
	if n, err := im2.ReadAt(got, 0); err != nil || int64(n) != size || !bytes.Equal(got, e.f.want) {
		t.Fatalf("cached read: %d, %v", n, err)
	}
	if s := im2.Stats(); s.CacheMisses != 0 || s.Fetches != 0 {
		t.Errorf("cached read fetched: %+v", s)
	}
}

func TestReadEdges(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	size := im.Size()
	p := make([]byte, 8192)
	if n, err := im.ReadAt(p, size-4096); n != 4096 || err != io.EOF || !bytes.Equal(p[:n], e.f.want[size-4096:]) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	if n, err := im.ReadAt(p, size); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v", n, err)
	}
	if _, err := im.ReadAt(p, -1); err == nil {
		t.Error("negative offset accepted")
	}
	if n, err := im.ReadAt(nil, 0); n != 0 || err != nil {
		t.Errorf("empty read: %d, %v", n, err)
	}
	// A zero chunk reads as zeros without a request, even over a dirty
	// buffer.
	for i, c := range e.art.Index.Chunks {
		if c.Zero() {
			off, n := e.chunkRange(i)
			buf := bytes.Repeat([]byte{0xff}, int(n))
			if _, err := im.ReadAt(buf, off); err != nil || !bytes.Equal(buf, make([]byte, n)) {
				t.Fatalf("zero chunk %d: %v", i, err)
			}
			break
		}
	}
	if gets, _ := e.faults.counts(); gets != 1 {
		t.Errorf("%d blob requests, want 1 (the last chunk)", gets)
	}
	im.Close()
	if _, err := im.ReadAt(p, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

// adjacentRun finds n consecutive chunks that are stored back to back in
// the data blob.
func adjacentRun(t *testing.T, e *env, n int) int {
	t.Helper()
	cs := e.art.Index.Chunks
	for i := 0; i+n <= len(cs); i++ {
		ok := true
		for j := i; j < i+n && ok; j++ {
			ok = !cs[j].Zero() && (j == i || cs[j].Offset == cs[j-1].Offset+uint64(cs[j-1].Length))
		}
		if ok {
			return i
		}
	}
	t.Fatalf("no run of %d adjacent chunks", n)
	return 0
}

func TestCoalescing(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	const n = 8
	first := adjacentRun(t, e, n)
	off, _ := e.chunkRange(first)
	e.read(im, off, n*e.art.Index.ChunkSize)
	if gets, ranges := e.faults.counts(); gets != 1 {
		t.Fatalf("%d requests for %d adjacent missing chunks, want 1: %q", gets, n, ranges)
	}
	// A range bound splits the run.
	e2 := newEnv(t)
	im2 := e2.open(WithMaxRange(1))
	e2.read(im2, off, n*e.art.Index.ChunkSize)
	if gets, _ := e2.faults.counts(); gets != n {
		t.Fatalf("%d requests with a 1-byte range bound, want %d", gets, n)
	}
}

func TestSingleFlight(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.delay = 50 * time.Millisecond })
	im := e.open()
	off, n := e.chunkRange(e.f.storedChunk(t, 8))
	var wg sync.WaitGroup
	for k := range 8 {
		wg.Go(func() {
			got := make([]byte, 4096)
			o := off + int64(k%4)*4096%n
			if _, err := im.ReadAt(got, o); err != nil || !bytes.Equal(got, e.f.want[o:o+4096]) {
				t.Errorf("concurrent read at %d: %v", o, err)
			}
		})
	}
	wg.Wait()
	if gets, _ := e.faults.counts(); gets != 1 {
		t.Fatalf("%d requests for one chunk read 8 times at once, want 1", gets)
	}
}

// wrongFetcher returns well-formed zstd of the wrong bytes: it passes
// decompression and must fail the digest check.
type wrongFetcher struct {
	mu    sync.Mutex
	calls int
	comp  []byte
}

func (w *wrongFetcher) FetchRange(ctx context.Context, off, n int64) ([]byte, error) {
	w.mu.Lock()
	w.calls++
	w.mu.Unlock()
	if int64(len(w.comp)) != n {
		return nil, fmt.Errorf("wrongFetcher asked for %d bytes, has %d", n, len(w.comp))
	}
	return w.comp, nil
}

func TestDigestMismatchNeverServed(t *testing.T) {
	e := newEnv(t)
	// The smallest chunk's frame, padded with a skippable frame to the
	// length of a bigger chunk of the same uncompressed size.
	cs := e.art.Index.Chunks
	a, b := -1, -1
	for i, c := range cs {
		if c.Zero() || e.art.Index.ChunkLen(i) != e.art.Index.ChunkSize {
			continue
		}
		if a < 0 || c.Length < cs[a].Length {
			a = i
		}
		if b < 0 || c.Length > cs[b].Length {
			b = i
		}
	}
	pad := int(cs[b].Length) - int(cs[a].Length) - 8
	if pad < 0 {
		t.Fatal("no chunk is 8 bytes bigger than another")
	}
	frame := append([]byte(nil), e.f.blob[cs[a].Offset:cs[a].Offset+uint64(cs[a].Length)]...)
	frame = binary.LittleEndian.AppendUint32(frame, 0x184D2A50)
	frame = binary.LittleEndian.AppendUint32(frame, uint32(pad))
	frame = append(frame, make([]byte, pad)...)
	wf := &wrongFetcher{comp: frame}
	im := e.open(func(c *imageConfig) { c.fetcher = wf })
	off, n := e.chunkRange(b)
	_, err := im.ReadAt(make([]byte, n), off)
	if !errors.Is(err, ErrChunkCorrupt) || strings.Contains(err.Error(), "zstd") {
		t.Fatalf("read of a chunk with the wrong content: %v, want a digest mismatch", err)
	}
	if wf.calls != 2 || e.store.Has(cs[b].Digest) {
		t.Errorf("%d fetches, cached %v", wf.calls, e.store.Has(cs[b].Digest))
	}
}

func TestRecorded(t *testing.T) {
	e := newEnv(t)
	plain := e.open()
	e.read(plain, 0, 4096)
	if got := plain.Recorded(); len(got.Chunks) != 0 {
		t.Errorf("an image opened without recording recorded %v", got.Chunks)
	}
	im := e.open(WithRecording(true))
	cs := e.art.Index.ChunkSize
	for _, i := range []int{5, 2, 5, 9} {
		e.read(im, int64(i)*cs, 4096)
	}
	e.read(im, 2*cs+cs-1, 2) // chunks 2 and 3
	got := im.Recorded()
	if want := []int{5, 2, 9, 3}; got.ChunkSize != cs || !equalInts(got.Chunks, want) {
		t.Fatalf("Recorded() = %+v, want chunks %v", got, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCloseDuringRead(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.stall = -1 })
	im := e.open(WithFetchOptions(WithStallTimeout(time.Minute)))
	off, n := e.chunkRange(e.f.storedChunk(t, 11))
	errc := make(chan error, 1)
	go func() {
		_, err := im.ReadAt(make([]byte, n), off)
		errc <- err
	}()
	waitFor(t, "the fetch", func() bool { gets, _ := e.faults.counts(); return gets > 0 })
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("read cut by Close: %v, want ErrClosed", err)
	}
}

// TestReadAtFiles: once chunks are verified on disk, a read is handed over
// as descriptors and offsets that hold exactly its bytes (zero chunks as
// fd -1); before that, nothing is handed over.
func TestReadAtFiles(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	size := im.Size()
	noAdd := func(int, int64, int64) { t.Fatal("add called for a read that is not cached") }
	if _, ok := im.ReadAtFiles(0, int(min(size, 1<<20)), noAdd); ok {
		t.Fatal("ReadAtFiles succeeded before anything was fetched")
	}
	e.read(im, 0, size) // everything fetched, verified and stored
	// Chunk files are written after the read is answered.
	waitFor(t, "every chunk file written", func() bool {
		release, ok := im.ReadAtFiles(0, int(size), func(int, int64, int64) {})
		if ok {
			release()
		}
		return ok
	})
	cs := e.art.Index.ChunkSize
	zeroPieces := 0
	for _, r := range []struct{ off, n int64 }{
		{0, 4096}, {1, cs}, {cs - 100, 3 * cs}, {0, size}, {size - 5000, 5000},
	} {
		got := make([]byte, 0, r.n)
		release, ok := im.ReadAtFiles(r.off, int(r.n), func(fd int, off, n int64) {
			p := make([]byte, n)
			if fd == -1 {
				zeroPieces++
			} else if m, err := unix.Pread(fd, p, off); err != nil || int64(m) != n {
				t.Fatalf("pread of a handed-over piece (%d bytes at %d): %d, %v", n, off, m, err)
			}
			got = append(got, p...)
		})
		if !ok {
			t.Fatalf("ReadAtFiles(%d, %d) of a cached image failed", r.off, r.n)
		}
		release()
		if !bytes.Equal(got, e.f.want[r.off:r.off+r.n]) {
			t.Fatalf("ReadAtFiles(%d, %d): the pieces do not hold the image's bytes", r.off, r.n)
		}
	}
	if zeroPieces == 0 {
		t.Error("no zero chunk was handed over as fd -1")
	}
	for _, r := range []struct{ off, n int64 }{{-1, 10}, {size - 10, 11}, {0, 0}} {
		if _, ok := im.ReadAtFiles(r.off, int(r.n), noAdd); ok {
			t.Errorf("ReadAtFiles(%d, %d) outside the image succeeded", r.off, r.n)
		}
	}
}

// TestBytesRead: every read path counts the bytes it served, a failed or
// declined read none, so BytesRead is what the device's users read.
func TestBytesRead(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	size := im.Size()
	var want int64
	p := make([]byte, 70000)
	if _, err := im.ReadAt(p, 4096); err != nil { // a fault
		t.Fatal(err)
	}
	want += int64(len(p))
	if n, err := im.ReadAt(p, size-1000); n != 1000 || err != io.EOF { // past the end: the part served
		t.Fatalf("read across the end: %d, %v", n, err)
	}
	want += 1000
	if _, err := im.ReadAt(p, -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	if im.ReadAtCached(make([]byte, 8192), size/2+1) {
		t.Log("the middle of the image was cached already")
	} else if got := im.Stats().BytesRead; got != want {
		t.Fatalf("BytesRead = %d after a declined cached read, want %d", got, want)
	}
	e.read(im, 0, size) // everything fetched
	want += size
	if !im.ReadAtCached(make([]byte, 8192), 4096) {
		t.Fatal("ReadAtCached of a fetched range declined")
	}
	want += 8192
	waitFor(t, "every chunk file written", func() bool {
		release, ok := im.ReadAtFiles(0, 4096, func(int, int64, int64) {})
		if ok {
			release()
			want += 4096
		}
		return ok
	})
	if s := im.Stats(); s.BytesRead != want {
		t.Errorf("BytesRead = %d, want %d (%d reads)", s.BytesRead, want, s.Reads)
	}
	var tot Stats
	tot.Add(im.Stats())
	tot.Add(im.Stats())
	if tot.BytesRead != 2*want {
		t.Errorf("Stats.Add: BytesRead %d, want %d", tot.BytesRead, 2*want)
	}
}
