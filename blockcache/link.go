package blockcache

import (
	"sync"
	"time"
)

// linkEstimate follows a fetcher's link to its registry from its range
// requests: the time from sending a request to its answer's headers (a
// round trip plus the registry's time) and the rate at which answer bodies
// arrive. Fault-around sizes its fetches from their product, the bytes a
// round trip is worth (see WithFaultAround).
type linkEstimate struct {
	mu    sync.Mutex
	rtt   time.Duration // moving average of request to headers
	rate  float64       // moving average of body bytes per second
	rtts  int           // samples of each so far
	rates int
}

// linkMinBody is the smallest body whose arrival rate is a sample: a
// smaller one arrives in a few packets, too fast to time.
const linkMinBody = 64 << 10

// linkWeight is the weight of a new sample in the moving averages.
const linkWeight = 0.25

// note records one answer: its headers came after headers, its body of
// bytes took body to arrive (bytes 0: not timed).
func (l *linkEstimate) note(headers time.Duration, bytes int64, body time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if headers > 0 {
		if l.rtts == 0 {
			l.rtt = headers
		} else {
			l.rtt += time.Duration(linkWeight * float64(headers-l.rtt))
		}
		l.rtts++
	}
	if bytes >= linkMinBody && body > 0 {
		r := float64(bytes) / body.Seconds()
		if l.rates == 0 {
			l.rate = r
		} else {
			l.rate += linkWeight * (r - l.rate)
		}
		l.rates++
	}
}

// estimate returns the link's body rate in bytes per second and its round
// trip; ok is false until both have a sample.
func (l *linkEstimate) estimate() (rate float64, rtt time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rate, l.rtt, l.rtts > 0 && l.rates > 0
}

// Link returns what the fetcher's range requests measured of its link to
// the registry: the rate answer bodies arrived at (bytes per second), the
// time from a request to its answer's headers, and whether both have been
// measured yet.
func (f *RangeFetcher) Link() (rate float64, rtt time.Duration, ok bool) {
	return f.link.estimate()
}

// linkMeter is a fetcher that measures its link (RangeFetcher does).
type linkMeter interface {
	Link() (rate float64, rtt time.Duration, ok bool)
}
