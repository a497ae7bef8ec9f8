package blockcache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// chunkRange returns the image bytes of chunk i.
func (e *env) chunkRange(i int) (off, n int64) {
	ix := e.art.Index
	return int64(i) * ix.ChunkSize, ix.ChunkLen(i)
}

func TestRegistryDownThenBack(t *testing.T) {
	e := newEnv(t)
	// Down before the first request (the pings that set up auth fail
	// too), then 5xx, within the retry budget. Open's warm-up ping takes
	// the first failure (the read joins it, or comes after it), so the
	// read retries at least 2 pings and 2 range requests.
	e.faults.set(func(h *faultHandler) { h.drop, h.status503 = 3, 2 })
	im := e.open()
	off, n := e.chunkRange(e.f.storedChunk(t, 0))
	e.read(im, off, n)
	if s := im.Stats(); s.Fetcher.Retries < 4 {
		t.Errorf("%d retries, want at least 4", s.Fetcher.Retries)
	}
}

func TestRegistryDownBeyondDeadline(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.drop = -1 })
	im := e.open(WithReadTimeout(300 * time.Millisecond))
	off, n := e.chunkRange(e.f.storedChunk(t, 1))
	_, err := im.ReadAt(make([]byte, n), off)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("read with the registry down: %v, want ErrTimeout", err)
	}
	if s := im.Stats(); s.Timeouts != 1 || s.ReadErrors != 1 || s.FaultLatency.Count != 1 {
		t.Errorf("stats after a timeout: %+v", s)
	}
	e.faults.set(func(h *faultHandler) { h.drop = 0 })
	e.read(im, off, n)
}

func TestBitFlipNeverServed(t *testing.T) {
	e := newEnv(t)
	im := e.open()
	i := e.f.storedChunk(t, 2)
	off, n := e.chunkRange(i)

	e.faults.set(func(h *faultHandler) { h.flip = -1 })
	_, err := im.ReadAt(make([]byte, n), off)
	if !errors.Is(err, ErrChunkCorrupt) {
		t.Fatalf("read of a chunk always flipped: %v, want ErrChunkCorrupt", err)
	}
	if gets, _ := e.faults.counts(); gets != 2 {
		t.Errorf("%d fetches of a corrupt chunk, want 2 (one refetch)", gets)
	}
	if e.store.Has(e.art.Index.Chunks[i].Digest) {
		t.Fatal("a corrupt chunk was cached")
	}

	// A single flip is healed by the refetch.
	e.faults.set(func(h *faultHandler) { h.flip, h.blobGets = 1, 0 })
	e.read(im, off, n)
	if gets, _ := e.faults.counts(); gets != 2 {
		t.Errorf("%d fetches healing one flip, want 2", gets)
	}
	if s := im.Stats(); s.CorruptChunks != 3 {
		t.Errorf("%d corrupt chunks counted, want 3", s.CorruptChunks)
	}
}

func TestRangeIgnored(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.ignoreRange = true })
	im := e.open()
	for k := range 3 {
		off, n := e.chunkRange(e.f.storedChunk(t, 10*k+3))
		e.read(im, off+100, n/2)
	}
	if s := im.Stats(); s.Fetcher.RangeIgnored != 3 {
		t.Errorf("%d answers ignoring Range, want 3", s.Fetcher.RangeIgnored)
	}
}

func TestBearerAuth(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.auth = true })
	good := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "user", Password: "pass"})}
	im := e.open(WithFetchOptions(WithKeychain(good)))
	off, n := e.chunkRange(e.f.storedChunk(t, 4))
	e.read(im, off, n)
	var calls int
	if e.faults.set(func(h *faultHandler) { calls = h.tokenCalls }); calls == 0 {
		t.Error("the token endpoint was never asked")
	}

	// Wrong credentials fail fast, not by timing out.
	bad := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "user", Password: "wrong"})}
	im = e.open(WithFetchOptions(WithKeychain(bad)))
	off, n = e.chunkRange(e.f.storedChunk(t, 5))
	_, err := im.ReadAt(make([]byte, n), off)
	if err == nil || errors.Is(err, ErrTimeout) {
		t.Fatalf("read with wrong credentials: %v, want an authentication error", err)
	}
}

func TestRedirectToStorage(t *testing.T) {
	e := newEnv(t)
	storage := newStorageServer(t, e.f.blob)
	e.faults.set(func(h *faultHandler) { h.auth, h.redirectTo = true, storage.URL+"/bucket/blob?sig=x" })
	good := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "user", Password: "pass"})}
	im := e.open(WithFetchOptions(WithKeychain(good)))
	for k := range 3 {
		off, n := e.chunkRange(e.f.storedChunk(t, 7*k+1))
		e.read(im, off, 2*n)
	}
	storage.mu.Lock()
	defer storage.mu.Unlock()
	if storage.requests == 0 {
		t.Fatal("blob storage was never asked")
	}
	if storage.authSeen {
		t.Error("the registry's credentials were sent to blob storage")
	}
}

func TestTruncatedBodies(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.truncate = 2 })
	im := e.open()
	off, n := e.chunkRange(e.f.storedChunk(t, 6))
	e.read(im, off, n)
	if s := im.Stats(); s.Fetcher.Retries != 2 {
		t.Errorf("%d retries after 2 truncated bodies", s.Fetcher.Retries)
	}
	// Each retry asks only for the bytes not yet had: the same end, a
	// later start.
	_, ranges := e.faults.counts()
	if len(ranges) != 3 {
		t.Fatalf("ranges sent: %q, want 3", ranges)
	}
	var prevFirst, prevLast int64 = -1, -1
	for _, r := range ranges {
		var first, last int64
		if _, err := fmt.Sscanf(r, "bytes=%d-%d", &first, &last); err != nil {
			t.Fatalf("range %q: %v", r, err)
		}
		if prevLast >= 0 && (first <= prevFirst || last != prevLast) {
			t.Errorf("ranges sent: %q: a retry did not resume after the bytes had", ranges)
		}
		prevFirst, prevLast = first, last
	}
}

func TestFetchRangeBounds(t *testing.T) {
	e := newEnv(t)
	f := NewRangeFetcher(e.art.Repo, e.art.Data)
	ctx := context.Background()
	size := e.art.Data.Size
	for _, r := range [][2]int64{{-1, 10}, {0, 0}, {size - 5, 10}, {size, 1}} {
		if _, err := f.FetchRange(ctx, r[0], r[1]); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Errorf("FetchRange(%d, %d): %v", r[0], r[1], err)
		}
	}
	// The last byte, asked for exactly: the registry answers 206.
	b, err := f.FetchRange(ctx, size-1, 1)
	if err != nil || b[0] != e.f.blob[size-1] {
		t.Fatalf("last byte: %v", err)
	}
	if gets, ranges := e.faults.counts(); gets != 1 || ranges[0] != "bytes="+itoa(size-1)+"-"+itoa(size-1) {
		t.Errorf("ranges sent: %q", ranges)
	}
}

func TestContentRangeChecked(t *testing.T) {
	for _, h := range []string{"", "bytes 0-9/100", "bytes 10-19/99", "bytes 10-18/100", "bits 10-19/100", "bytes x-19/100"} {
		if err := checkContentRange(h, 10, 10, 100); err == nil {
			t.Errorf("Content-Range %q accepted", h)
		}
	}
	for _, h := range []string{"bytes 10-19/100", "bytes 10-19/*"} {
		if err := checkContentRange(h, 10, 10, 100); err != nil {
			t.Errorf("Content-Range %q: %v", h, err)
		}
	}
}

func TestStalledConnectionRetried(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.stall = 1 })
	im := e.open(WithFetchOptions(WithStallTimeout(100 * time.Millisecond)))
	off, n := e.chunkRange(e.f.storedChunk(t, 9))
	e.read(im, off, n)
	if s := im.Stats(); s.Fetcher.Retries != 1 {
		t.Errorf("%d retries after one stalled answer, want 1", s.Fetcher.Retries)
	}
}

// TestClientWarmedAtOpen: Open sets up the registry client (ping and token)
// in the background, so the first fault pays only its range request.
func TestClientWarmedAtOpen(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.auth = true })
	good := staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "user", Password: "pass"})}
	im := e.open(WithFetchOptions(WithKeychain(good)))
	waitFor(t, "the token exchange started by Open", func() bool {
		var calls int
		e.faults.set(func(h *faultHandler) { calls = h.tokenCalls })
		return calls == 1
	})
	if gets, _ := e.faults.counts(); gets != 0 {
		t.Fatalf("%d blob GETs before any read", gets)
	}
	off, n := e.chunkRange(e.f.storedChunk(t, 3))
	e.read(im, off, n)
	var calls int
	e.faults.set(func(h *faultHandler) { calls = h.tokenCalls })
	if gets, _ := e.faults.counts(); calls != 1 || gets != 1 {
		t.Errorf("the first fault made %d token requests and %d blob GETs, want 1 token request in all and 1 GET", calls, gets)
	}
}

// TestAlwaysTruncated: a range whose body always breaks off midway fails
// the read at its deadline (the chunks decoded as bytes arrive get the
// fetch's error, nothing hangs), and nothing of it is cached.
func TestAlwaysTruncated(t *testing.T) {
	e := newEnv(t)
	e.faults.set(func(h *faultHandler) { h.truncate = -1 })
	im := e.open(WithReadTimeout(300 * time.Millisecond))
	first := e.f.storedChunk(t, 7)
	off, _ := e.chunkRange(first)
	n := 3 * e.art.Index.ChunkSize
	if _, err := im.ReadAt(make([]byte, n), off); !errors.Is(err, ErrTimeout) {
		t.Fatalf("read of always-truncated chunks: %v, want ErrTimeout", err)
	}
	e.faults.set(func(h *faultHandler) { h.truncate = 0 })
	e.read(im, off, n)
}
