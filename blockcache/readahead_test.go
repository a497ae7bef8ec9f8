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
