package blockcache

import (
	"context"
	"testing"
	"time"
)

func TestLinkEstimate(t *testing.T) {
	var l linkEstimate
	if _, _, ok := l.estimate(); ok {
		t.Fatal("estimate before any sample")
	}
	l.note(20*time.Millisecond, 0, 0)
	l.note(0, linkMinBody-1, time.Millisecond) // too small to time
	if _, _, ok := l.estimate(); ok {
		t.Fatal("estimate with a round trip but no body timed")
	}
	l.note(0, 1<<20, 100*time.Millisecond)
	rate, rtt, ok := l.estimate()
	if !ok || rtt != 20*time.Millisecond || rate != float64(1<<20)/0.1 {
		t.Fatalf("estimate %v B/s, %v, %v; want %v B/s, 20ms", rate, rtt, ok, float64(1<<20)/0.1)
	}
	// Moving averages: a new sample moves them a quarter of the way.
	l.note(60*time.Millisecond, 1<<20, 50*time.Millisecond)
	rate, rtt, _ = l.estimate()
	if want := float64(1<<20)/0.1 + 0.25*(float64(1<<20)/0.05-float64(1<<20)/0.1); rate != want || rtt != 30*time.Millisecond {
		t.Errorf("after a second sample: %v B/s, %v; want %v B/s, 30ms", rate, rtt, want)
	}
}

// TestFetcherMeasuresLink: a range request's answer times the link.
func TestFetcherMeasuresLink(t *testing.T) {
	e := newEnv(t)
	f := NewRangeFetcher(e.art.Repo, e.art.Data, WithPlainHTTP())
	if _, _, ok := f.Link(); ok {
		t.Fatal("link measured before any request")
	}
	if _, err := f.FetchRange(context.Background(), 0, min(e.art.Data.Size, 256<<10)); err != nil {
		t.Fatal(err)
	}
	rate, rtt, ok := f.Link()
	if !ok || rate <= 0 || rtt <= 0 {
		t.Fatalf("after a 256 KiB range: rate %v, rtt %v, ok %v", rate, rtt, ok)
	}
}

// fixedLink is a link of rate bytes per second and round trip rtt.
func fixedLink(rate float64, rtt time.Duration) Option {
	return func(c *imageConfig) { c.link = func() (float64, time.Duration, bool) { return rate, rtt, true } }
}

// TestFaultAround: a fault that continues no stream fetches the chunks
// after it, up to the link's round trips' worth of compressed bytes, in
// its own range request; reading them then costs none.
func TestFaultAround(t *testing.T) {
	const n = 24
	e := newEnv(t)
	first := adjacentRun(t, e, n)
	cs := e.art.Index.Chunks
	// Budget: 4 round trips of 20 ms at 4 MB/s = 320 kB, compressed,
	// for the chunks after the faulting one.
	const rate, rtt, rtts = 4e6, 20 * time.Millisecond, 4
	budget := int64(rtts * rate * rtt.Seconds())
	want := 0
	for used := int64(0); first+1+want < len(cs) && used+int64(cs[first+1+want].Length) <= budget; want++ {
		used += int64(cs[first+1+want].Length)
	}
	if want < 1 || want >= n-1 {
		t.Fatalf("fixture: %d chunks fit the budget, want 1..%d", want, n-2)
	}
	im := e.open(WithFaultAround(rtts), fixedLink(rate, rtt))
	// The fault, then the chunks around it: those join its fetch or find
	// it done.
	order := []int{first}
	for i := first + 1; i <= first+want; i++ {
		order = append(order, i)
	}
	gets, _ := e.readChunks(im, order)
	if s := im.Stats(); gets != 1 || s.ReadaheadChunks != int64(want) {
		t.Fatalf("a fault, then the %d chunks after it: %d range requests, %d chunks fetched ahead; want 1 and %d", want, gets, s.ReadaheadChunks, want)
	}
}

// TestFaultAroundSlowLinkOrUnmeasured: on a link whose round trip is worth
// less than a chunk, or one not measured yet, a fault fetches its own
// chunks only.
func TestFaultAroundSlowLinkOrUnmeasured(t *testing.T) {
	e := newEnv(t)
	first := adjacentRun(t, e, 4)
	unmeasured := func(c *imageConfig) { c.link = func() (float64, time.Duration, bool) { return 0, 0, false } }
	for name, link := range map[string]Option{"slow": fixedLink(1e5, 10*time.Millisecond), "unmeasured": unmeasured} {
		im := e.open(WithFaultAround(4), link)
		if gets, _ := e.readChunks(im, []int{first}); gets != 1 || im.Stats().ReadaheadChunks != 0 {
			t.Errorf("%s link: %d range requests, %d chunks ahead; want 1 and 0", name, gets, im.Stats().ReadaheadChunks)
		}
		first++
	}
}
