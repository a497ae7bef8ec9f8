package blockcache

import (
	"math/bits"
	"math/rand/v2"
	"testing"
)

// readChunks reads the given chunks one at a time, in order, checking the
// bytes, and returns the data blob GETs and bytes fetched it took.
func (e *env) readChunks(im *Image, order []int) (gets int, fetched int64) {
	e.t.Helper()
	before, _ := e.faults.counts()
	b0 := im.Stats().BytesFetched
	for _, i := range order {
		off, n := e.chunkRange(i)
		e.read(im, off, n)
	}
	// Readahead still in flight when the last read returned is counted
	// too: Close waits for it.
	im.Close()
	after, _ := e.faults.counts()
	return after - before, im.Stats().BytesFetched - b0
}

func TestReadaheadSequential(t *testing.T) {
	const n = 40
	e := newEnv(t)
	first := adjacentRun(t, e, n)
	var order []int
	for i := first; i < first+n; i++ {
		order = append(order, i)
	}
	off := newEnv(t)
	plain, _ := off.readChunks(off.open(WithReadahead(0)), order)
	im := e.open()
	gets, _ := e.readChunks(im, order)
	// Windows of 1, 2, 4, ... chunks: about log2(n) fetches.
	if limit := bits.Len(n) + 1; gets > limit || plain != n {
		t.Fatalf("%d sequential one-chunk reads: %d range requests with readahead (want at most %d), %d without (want %d)", n, gets, limit, plain, n)
	}
	if s := im.Stats(); s.ReadaheadChunks < n/2 {
		t.Errorf("%d chunks fetched ahead, want at least %d", s.ReadaheadChunks, n/2)
	}
	t.Logf("%d sequential chunk reads: %d range requests with readahead, %d without", n, gets, plain)
}

func TestReadaheadTwoStreams(t *testing.T) {
	const n = 16
	e := newEnv(t)
	first := adjacentRun(t, e, 3*n)
	var order []int
	for k := range n {
		order = append(order, first+k, first+2*n+k)
	}
	gets, _ := e.readChunks(e.open(), order)
	if limit := 2 * (bits.Len(n) + 1); gets > limit {
		t.Fatalf("two interleaved streams of %d chunks: %d range requests, want at most %d", n, gets, limit)
	}
	t.Logf("two interleaved streams of %d chunks: %d range requests", n, gets)
}

func TestReadaheadRandomFetchesNoMore(t *testing.T) {
	e := newEnv(t)
	const n = 40
	first := adjacentRun(t, e, n)
	// Every other chunk, shuffled: no read starts where an earlier one
	// ended.
	var order []int
	for i := first; i < first+n; i += 2 {
		order = append(order, i)
	}
	rand.New(rand.NewPCG(5, 6)).Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
	off := newEnv(t)
	offGets, offBytes := off.readChunks(off.open(WithReadahead(0)), order)
	im := e.open()
	gets, got := e.readChunks(im, order)
	if got != offBytes || gets != offGets || gets != len(order) {
		t.Fatalf("%d random reads: %d requests and %d bytes with readahead, %d and %d without", len(order), gets, got, offGets, offBytes)
	}
	if s := im.Stats(); s.ReadaheadChunks != 0 {
		t.Errorf("%d chunks fetched ahead of random reads", s.ReadaheadChunks)
	}
}

func TestReadaheadChunksStayBackground(t *testing.T) {
	e := newEnv(t)
	first := adjacentRun(t, e, 8)
	im := e.open()
	// The second read continues the first: chunks first+2.. come ahead.
	e.readChunks(im, []int{first, first + 1})
	ix := e.art.Index
	if !e.store.hot.has(ix.Chunks[first+1].Digest) {
		t.Fatal("the faulting chunk is not in the store's memory")
	}
	if !e.store.Has(ix.Chunks[first+2].Digest) || e.store.hot.has(ix.Chunks[first+2].Digest) {
		t.Errorf("the chunk read ahead: stored %v, in memory %v; want stored, not in memory (no read came for it)",
			e.store.Has(ix.Chunks[first+2].Digest), e.store.hot.has(ix.Chunks[first+2].Digest))
	}
}

func TestReadaheadLeavesASlot(t *testing.T) {
	const n = 12
	e := newEnv(t)
	first := adjacentRun(t, e, n)
	im := e.open(WithConcurrency(2))
	// One group carrying readahead holds a slot: with two, no more.
	im.loader.aheadGroups.Store(1)
	var order []int
	for i := first; i < first+n; i++ {
		order = append(order, i)
	}
	if gets, _ := e.readChunks(im, order); gets != n || im.Stats().ReadaheadChunks != 0 {
		t.Errorf("readahead at its bound: %d requests for %d sequential reads, %d chunks ahead; want %d, 0", gets, n, im.Stats().ReadaheadChunks, n)
	}
}

// TestReadaheadSmallReads reads a run of chunks in pieces smaller than a
// chunk, as a reader of file after file of an interpreter's library does:
// reads served from chunks fetched ahead, or waiting for them, keep the
// stream going.
func TestReadaheadSmallReads(t *testing.T) {
	const n = 40
	const piece = 12 << 10 // not a divisor of the chunk size
	e := newEnv(t)
	first := adjacentRun(t, e, n)
	start, _ := e.chunkRange(first)
	end, _ := e.chunkRange(first + n)
	im := e.open()
	for off := start; off < end; off += piece {
		e.read(im, off, min(piece, end-off))
	}
	im.Close()
	gets, _ := e.faults.counts()
	if limit := bits.Len(n) + 2; gets > limit {
		t.Fatalf("%d-byte sequential reads over %d chunks: %d range requests, want at most %d", piece, n, gets, limit)
	}
	t.Logf("%d-byte sequential reads over %d chunks: %d range requests", piece, n, gets)
}

// TestReadaheadAcrossCachedChunks: chunks already cached in the middle of
// a sequential read (shared with an image run before, or fetched as
// metadata) end a fetch ahead, and the stream goes on past them.
func TestReadaheadAcrossCachedChunks(t *testing.T) {
	const n = 40
	e := newEnv(t)
	first := adjacentRun(t, e, n)
	cached := []int{first + 4, first + 10, first + 25}
	e.readChunks(e.open(WithReadahead(0)), cached)
	var order []int
	for i := first; i < first+n; i++ {
		order = append(order, i)
	}
	gets, _ := e.readChunks(e.open(), order)
	if limit := bits.Len(n) + 1 + len(cached); gets > limit {
		t.Fatalf("%d sequential reads past %d cached chunks: %d range requests, want at most %d", n, len(cached), gets, limit)
	}
	t.Logf("%d sequential reads past %d cached chunks: %d range requests", n, len(cached), gets)
}
