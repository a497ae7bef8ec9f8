package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pacer is a link of a fixed bandwidth shared by every response: a byte
// sent while the link is busy waits until the bytes before it have gone. An
// idle link starts afresh (no burst credit), but a transfer that wakes up
// late (sleep overshoot) may catch up for up to lag, so the link keeps its
// rate instead of losing every overshoot. Only the late transfer itself
// catches up: a new response (or one whose upstream was slow) gets no
// credit for the time the link sat idle before it, which would let it
// arrive sooner than the bandwidth allows.
type pacer struct {
	rate float64 // bytes per second; 0: unlimited
	lag  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	free time.Time // when the bytes reserved so far have been sent
}

const defaultLag = 2 * time.Millisecond

func newPacer(bytesPerSecond int64) *pacer {
	return &pacer{rate: float64(bytesPerSecond), lag: defaultLag, now: time.Now}
}

// reserve books n bytes on the link for a transfer whose previous piece was
// due at prev (zero for its first piece) and returns when they will have
// been sent.
func (p *pacer) reserve(n int, prev time.Time) time.Time {
	now := p.now()
	if p.rate == 0 {
		return now
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The bytes go once the link is free, and not before they are had;
	// a transfer late by at most lag continues from where it was due.
	start := now
	if !prev.IsZero() && now.Sub(prev) <= p.lag {
		start = prev
	}
	if p.free.After(start) {
		start = p.free
	}
	p.free = start.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	return p.free
}

// pieceSize bounds one paced read, so concurrent responses interleave on
// the link and a body's first bytes do not wait for the whole of it.
const pieceSize = 16 << 10

// pacedBody releases a response body at the pacer's rate and counts it.
type pacedBody struct {
	rc    io.ReadCloser
	pace  *pacer
	count func(int64)
	due   time.Time // when the previous piece was sent
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if len(p) > pieceSize {
		p = p[:pieceSize]
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		b.due = b.pace.reserve(n, b.due)
		sleepUntil(b.due)
		b.count(int64(n))
	}
	return n, err
}

func (b *pacedBody) Close() error { return b.rc.Close() }

// sleepUntil sleeps with nanosleep(2) rather than time.Sleep: the Go
// runtime's timers wake up to a millisecond late on some VMs (measured on
// the project's CI machines: time.Sleep(164µs) took 1.1 ms), which would
// add a millisecond per request and per paced piece. nanosleep blocks the
// thread, not just the goroutine; a benchmark proxy can afford that. The
// thread's timer slack is set to 1 ns first: Linux lets a sleep of a
// normal thread end up to 50 µs late by default, which would add to every
// request's round trip and to its last piece, beyond the link modelled.
func sleepUntil(t time.Time) {
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(d.Nanoseconds())
		if err := unix.Nanosleep(&ts, nil); err != nil && !errors.Is(err, unix.EINTR) {
			time.Sleep(time.Until(t))
			return
		}
	}
}

// parseSize parses "100MB" (decimal), "100MiB" or "64KiB" (binary), or a
// plain number of bytes; a trailing "/s" is allowed.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
	} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("size %q: want bytes with an optional unit, such as 100MB or 64KiB", s)
	}
	return int64(v * float64(mult)), nil
}
