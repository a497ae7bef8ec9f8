package blockcache

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// waitFor polls cond for up to a generous deadline: a liveness bound, not
// a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
	}
}

func TestBackgroundFetchCompletes(t *testing.T) {
	e := newEnv(t)
	rate := e.art.Data.Size * 4 // about a quarter of a second
	im := e.open(WithBackgroundRate(rate), WithMaxRange(256<<10))
	waitFor(t, "background fetch", func() bool { return im.Stats().BackgroundDone })
	s := im.Stats()
	if s.PercentComplete != 100 || s.BackgroundBytes != e.art.Index.StoredBytes() {
		t.Errorf("after background fetch: %+v; stored bytes %d", s, e.art.Index.StoredBytes())
	}
	// The limiter let through what was fetched, and made it wait as long
	// as the rate says for everything beyond the first burst.
	granted, _, span := im.limiter.account()
	if granted < s.BackgroundBytes {
		t.Errorf("limiter granted %d bytes, background fetched %d", granted, s.BackgroundBytes)
	}
	minSpan := time.Duration(float64(granted-int64(im.limiter.burst)) / float64(rate) * float64(time.Second))
	if span < minSpan-time.Millisecond {
		t.Errorf("limiter let %d bytes through in %s at %d B/s with a %v-byte burst, want at least %s", granted, span, rate, im.limiter.burst, minSpan)
	}
	// Everything is local: reads need no registry.
	e.faults.set(func(h *faultHandler) { h.drop = -1 })
	got := make([]byte, im.Size())
	if _, err := im.ReadAt(got, 0); err != nil || !bytes.Equal(got, e.f.want) {
		t.Fatalf("read after background fetch: %v", err)
	}
}

func TestForegroundDuringBackground(t *testing.T) {
	e := newEnv(t)
	// A crawl: background fetch is far from done while the test reads.
	im := e.open(WithBackgroundRate(64<<10), WithMaxRange(64<<10))
	waitFor(t, "the background fetch to start", func() bool { return im.Stats().BackgroundBytes > 0 })
	last := len(e.art.Index.Chunks) - 1
	for _, i := range []int{last, last / 2, e.f.storedChunk(t, 30)} {
		off, n := e.chunkRange(i)
		e.read(im, off, n)
	}
	if s := im.Stats(); s.BackgroundDone || s.CacheMisses == 0 {
		t.Errorf("stats: %+v", s)
	}
}

func TestProfileFetchedFirstInOrder(t *testing.T) {
	e := newEnv(t)
	var prof []int
	for k := 20; k >= 15; k-- {
		prof = append(prof, e.f.storedChunk(t, k))
	}
	prof = append(prof, -1, len(e.art.Index.Chunks)+5) // ignored
	im := e.open(WithProfile(artifact.Profile{ChunkSize: e.art.Index.ChunkSize, Chunks: prof}))
	cs := e.art.Index.Chunks
	waitFor(t, "the profile", func() bool { return e.store.Has(cs[prof[5]].Digest) })
	gets, ranges := e.faults.counts()
	var want []string
	for _, i := range prof[:6] {
		want = append(want, fmt.Sprintf("bytes=%d-%d", cs[i].Offset, cs[i].Offset+uint64(cs[i].Length)-1))
	}
	if gets != 6 || !slices.Equal(ranges, want) {
		t.Errorf("ranges fetched: %q, want %q", ranges, want)
	}
	if s := im.Stats(); s.BackgroundDone {
		t.Error("without a rate, background fetch went beyond the profile")
	}
}

func TestArtifactProfile(t *testing.T) {
	e := newEnv(t)
	i := e.f.storedChunk(t, 12)
	raw, err := artifact.Profile{ChunkSize: e.art.Index.ChunkSize, Chunks: []int{i}}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(raw, artifact.ProfileMediaType)
	if err := remote.WriteLayer(e.art.Repo, l); err != nil {
		t.Fatal(err)
	}
	d, _ := l.Digest()
	e.art.Profile = &v1.Descriptor{MediaType: artifact.ProfileMediaType, Digest: d, Size: int64(len(raw))}
	e.open()
	waitFor(t, "the artifact's profile", func() bool { return e.store.Has(e.art.Index.Chunks[i].Digest) })
}

// fakeClock is virtual time for the token bucket: sleeping advances it.
type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Time { return time.Unix(0, c.now.Load()) }
func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	c.now.Add(int64(d))
	return nil
}

func TestTokenBucketAccounting(t *testing.T) {
	const rate, burst = 1 << 20, 256 << 10
	var clk fakeClock
	clk.now.Store(time.Unix(1000, 0).UnixNano())
	b := newTokenBucket(rate, burst)
	b.now, b.sleep = clk.Now, clk.Sleep
	start := clk.Now()
	rng := rand.New(rand.NewPCG(5, 6))
	var total int64
	for range 200 {
		n := 1 + rng.Int64N(512<<10) // some bigger than the burst
		total += n
		if err := b.wait(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	granted, waited, span := b.account()
	elapsed := clk.Now().Sub(start)
	ideal := time.Duration(float64(total-burst) / rate * float64(time.Second))
	if granted != total || waited != elapsed || span != elapsed {
		t.Errorf("granted %d of %d; waited %s over %s, clock moved %s", granted, total, waited, span, elapsed)
	}
	if elapsed < ideal-time.Millisecond || elapsed > ideal+time.Millisecond {
		t.Errorf("%d bytes at %d B/s with a %d-byte burst took %s, want %s", total, rate, burst, elapsed, ideal)
	}
	// Idle time refills up to the burst only.
	clk.Sleep(nil, time.Hour)
	b.wait(context.Background(), burst)
	if _, w, _ := b.account(); w != waited {
		t.Errorf("a burst after idling waited %s", w-waited)
	}
	b.wait(context.Background(), rate)
	if _, w, _ := b.account(); w-waited != time.Second {
		t.Errorf("a second's worth past an empty bucket waited %s", w-waited)
	}
}

func TestSchedulerForegroundFirst(t *testing.T) {
	s := newScheduler(2, 1, 0)
	ctx := context.Background()
	var fg, bg atomic.Bool
	fg.Store(true)
	rel1, _ := s.acquire(ctx, &fg, false)
	rel2, _ := s.acquire(ctx, &fg, false)
	got := make(chan string, 3)
	go func() { r, _ := s.acquire(ctx, &bg, false); got <- "bg"; r() }()
	go func() {
		r, _ := s.acquire(ctx, &fg, false)
		got <- "fg"
		time.Sleep(10 * time.Millisecond)
		r()
	}()
	waitFor(t, "the foreground waiter", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.fgWaiting == 1 })
	rel1()
	if w := <-got; w != "fg" {
		t.Fatalf("%s got the free slot while a foreground fetch waited", w)
	}
	rel2()
	if w := <-got; w != "bg" {
		t.Fatalf("got %s", w)
	}

	// A waiting background fetch promoted to foreground goes ahead of
	// the foreground-free rule.
	var p atomic.Bool
	hold, _ := s.acquire(ctx, &fg, false)
	done := make(chan struct{})
	go func() { r, _ := s.acquire(ctx, &p, false); close(done); r() }()
	select {
	case <-done:
		t.Fatal("background fetch started while a foreground one ran")
	case <-time.After(20 * time.Millisecond):
	}
	p.Store(true)
	s.promote()
	<-done
	hold()
}

// TestBackgroundStoresAsItVerifies: a background range of many chunks is
// written to the store chunk by chunk as each verifies, so the decoded
// bytes waiting for the disk never exceed one chunk. (They were a whole
// range's, about forty 256 KiB chunks for 4 MiB; with ten images fetching
// in the background at once, over 100 MB.)
func TestBackgroundStoresAsItVerifies(t *testing.T) {
	e := newEnv(t)
	im := e.open(WithBackgroundRate(e.art.Data.Size*4), WithMaxRange(1<<20))
	waitFor(t, "background fetch", func() bool { return im.Stats().BackgroundDone })
	s := im.Stats()
	stored := 0
	for i := range e.art.Index.Chunks {
		if !e.art.Index.Chunks[i].Zero() {
			stored++
		}
	}
	// The test shows something only if ranges held several chunks.
	if s.Fetches*2 > int64(stored) {
		t.Fatalf("%d range requests for %d chunks: ranges of about one chunk, nothing to show", s.Fetches, stored)
	}
	if peak := im.loader.unstoredPeak.Load(); peak > im.ix.ChunkSize {
		t.Errorf("up to %d decoded bytes waited for the store at once, want at most one chunk (%d); %d chunks in %d ranges",
			peak, im.ix.ChunkSize, stored, s.Fetches)
	}
	if n := im.loader.unstored.Load(); n != 0 {
		t.Errorf("%d decoded bytes still counted as waiting for the store after the background fetch", n)
	}
}

// TestDecodedBudgetHoldsAcrossImages: however many images fetch at once,
// the decoded chunks waiting for the disk never exceed the store's budget
// (here two chunks, with twelve images each reading the whole image in
// 1 MiB reads at once); the reads are all correct.
func TestDecodedBudgetHoldsAcrossImages(t *testing.T) {
	e := newEnv(t)
	cs := e.art.Index.ChunkSize
	budget := 2 * cs
	e.store = openStore(t, t.TempDir(), 1<<30, WithDecodedBudget(budget))
	const images = 12
	var wg sync.WaitGroup
	for range images {
		im := e.open(WithMaxRange(1 << 20))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(0); off < im.Size(); off += 1 << 20 {
				e.read(im, off, min(1<<20, im.Size()-off))
			}
		}()
	}
	wg.Wait()
	if e.store.decodedWaits.Load() == 0 {
		t.Fatalf("no decode waited for the budget: the test shows nothing")
	}
	if peak := e.store.unstoredPeak.Load(); peak > budget {
		t.Errorf("up to %d decoded bytes waited for the disk at once, budget %d", peak, budget)
	}
	waitFor(t, "every chunk stored", func() bool { return e.store.unstored.Load() == 0 })
	t.Logf("peak %d of %d bytes; %d decodes waited", e.store.unstoredPeak.Load(), budget, e.store.decodedWaits.Load())
}
