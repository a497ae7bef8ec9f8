package blockcache

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestBackgroundYieldsToFaults: while reads keep faulting, the background
// fetch of every chunk starts no range request of its own, however fast its
// rate; once the faults stop, it fetches the whole image. (Before the quiet
// window it started one in every gap between faults, and at once on Open.)
func TestBackgroundYieldsToFaults(t *testing.T) {
	e := newEnv(t)
	const quiet = time.Second
	im := e.open(WithBackgroundRate(e.art.Data.Size*4), WithMaxRange(64<<10), WithBackgroundQuiet(quiet), WithArtifactProfile(false))
	// Faults on distinct chunks from the end of the image (the background
	// fetch goes from the start), each read alone: one range request each,
	// for exactly the chunk's bytes.
	want := map[string]bool{}
	seen := map[[32]byte]bool{}
	var faults []int
	for i := len(e.art.Index.Chunks) - 1; i >= 0 && len(faults) < 20; i-- {
		c := e.art.Index.Chunks[i]
		if c.Zero() || seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		faults = append(faults, i)
		want[fmt.Sprintf("bytes=%d-%d", c.Offset, c.Offset+uint64(c.Length)-1)] = true
	}
	for _, i := range faults {
		off, n := e.chunkRange(i)
		e.read(im, off, n)
		// A gap a twentieth of the quiet window: the container's own work
		// between two faults.
		time.Sleep(quiet / 20)
	}
	gets, ranges := e.faults.counts()
	for _, r := range ranges {
		if !want[r] {
			t.Errorf("a range request not for a fault (%s) started while reads kept faulting; all: %v", r, ranges)
		}
	}
	if gets != len(faults) {
		t.Errorf("%d blob requests for %d faults: %v", gets, len(faults), ranges)
	}
	if s := im.Stats(); s.CacheMisses != int64(len(faults)) || s.BackgroundBytes != 0 {
		t.Errorf("after the faults: %d misses (want %d), %d background bytes (want 0)", s.CacheMisses, len(faults), s.BackgroundBytes)
	}

	waitFor(t, "the background fetch once faults stopped", func() bool { return im.Stats().BackgroundDone })
	s := im.Stats()
	if s.PercentComplete != 100 || s.BackgroundYields == 0 {
		t.Errorf("after the background fetch: %.1f%% complete, %d yields", s.PercentComplete, s.BackgroundYields)
	}
	e.faults.set(func(h *faultHandler) { h.drop = -1 })
	got := make([]byte, im.Size())
	if _, err := im.ReadAt(got, 0); err != nil || !bytes.Equal(got, e.f.want) {
		t.Fatalf("read with the registry down after the background fetch: %v", err)
	}
}

// TestSchedulerQuietWindow: a yielding background fetch starts no sooner
// than the quiet window after the last foreground fetch ended (a lower
// bound time cannot break), and a promoted or non-yielding one does not
// wait for it.
func TestSchedulerQuietWindow(t *testing.T) {
	const quiet = 200 * time.Millisecond
	s := newScheduler(4, 1, quiet)
	ctx := context.Background()
	var fg, bg atomic.Bool
	fg.Store(true)
	rel, _ := s.acquire(ctx, &fg, false)
	ended := time.Now() // before the release, which starts the window
	rel()
	// Not yielding (the profile's prefetch): no wait for the window.
	r, _ := s.acquire(ctx, &bg, false)
	r()
	if s.yields.Load() != 0 {
		t.Errorf("a non-yielding fetch counted %d yields", s.yields.Load())
	}
	r, err := s.acquire(ctx, &bg, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(ended); d < quiet {
		t.Errorf("a yielding background fetch started %s after a foreground one ended, want at least %s", d, quiet)
	}
	r()
	if s.yields.Load() != 1 {
		t.Errorf("yields = %d, want 1", s.yields.Load())
	}

	// Foreground activity while it waits pushes the window on; a
	// promotion lets it go.
	rel, _ = s.acquire(ctx, &fg, false)
	first := time.Now()
	rel()
	var p atomic.Bool
	done := make(chan time.Time, 1)
	go func() { r, _ := s.acquire(ctx, &p, true); done <- time.Now(); r() }()
	time.Sleep(quiet / 2)
	rel, _ = s.acquire(ctx, &fg, false)
	again := time.Now()
	rel()
	select {
	case at := <-done:
		// It may have started before the second foreground fetch if this
		// goroutine slept long; never within a window.
		if at.Sub(first) < quiet || (at.After(again) && at.Sub(again) < quiet) {
			t.Errorf("a yielding fetch started %s after one foreground fetch and %s after another, want a window of %s", at.Sub(first), at.Sub(again), quiet)
		}
	case <-time.After(quiet / 4):
		p.Store(true)
		s.promote()
		<-done
	}
	if s.yields.Load() < 2 {
		t.Errorf("yields = %d, want at least 2", s.yields.Load())
	}

	// Past its span after Open, the window no longer holds a yielding
	// fetch back: an hour's window is not waited out.
	s = newScheduler(4, 1, time.Hour)
	s.until = time.Now()
	rel, _ = s.acquire(ctx, &fg, false)
	rel()
	bounded, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if r, err := s.acquire(bounded, &bg, true); err != nil {
		t.Errorf("a yielding fetch past the span still waited for the window: %v", err)
	} else {
		r()
	}
}

// TestBackgroundWindowHoldsNoFetchMemory: a background fetch waiting for
// its quiet window holds none of the store's fetch memory, so a fault of
// another range, which needs some, does not wait out the window; and a
// fault of one of its chunks promotes it at once. (Both waited out the
// window: with a 1 s window, busybox took 1.8 s more to start through
// sluiced and CRI; with this test's hour, the read below timed out.)
func TestBackgroundWindowHoldsNoFetchMemory(t *testing.T) {
	e := newEnv(t)
	im := e.open(WithBackgroundRate(e.art.Data.Size*4), WithBackgroundQuiet(time.Hour), WithArtifactProfile(false))
	waitFor(t, "the background fetch to wait for its window", func() bool { return im.Stats().BackgroundYields > 0 })
	if !e.store.fetchMem.TryAcquire(fetchMemory) {
		t.Fatal("a background fetch waiting for its quiet window holds fetch memory")
	}
	e.store.fetchMem.Release(fetchMemory)
	// Chunk 0 is in the fetch waiting for the window (the background
	// fetch goes in index order): the read promotes it.
	off, n := e.chunkRange(0)
	e.read(im, off, n)
	if s := im.Stats(); s.CacheMisses != 1 {
		t.Errorf("%d cache misses, want 1", s.CacheMisses)
	}
}
