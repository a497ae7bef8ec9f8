package blockcache

import (
	"context"
	"sync"
	"time"
)

// tokenBucket limits background fetching to rate bytes per second with
// bursts of up to burst bytes. A request bigger than the tokens left is
// granted at once and leaves a debt later requests wait out, so a request
// bigger than the burst still passes. Waiting goes through sleep, and time
// through now, so tests can account without real time.
type tokenBucket struct {
	rate, burst float64
	now         func() time.Time
	sleep       func(context.Context, time.Duration) error

	mu      sync.Mutex
	tokens  float64
	last    time.Time
	granted int64         // bytes granted in total
	waited  time.Duration // time spent waiting in total
	first   time.Time     // when the first bytes were granted
	until   time.Time     // when the last wait ends
}

func newTokenBucket(rate, burst int64) *tokenBucket {
	return &tokenBucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst), now: time.Now, sleep: sleep}
}

// wait takes n bytes' worth of tokens, waiting for any debt to clear.
func (b *tokenBucket) wait(ctx context.Context, n int64) error {
	b.mu.Lock()
	now := b.now()
	if b.first.IsZero() {
		b.first = now
	}
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	b.tokens -= float64(n)
	b.granted += n
	var d time.Duration
	if b.tokens < 0 {
		d = time.Duration(-b.tokens / b.rate * float64(time.Second))
		b.waited += d
	}
	b.until = now.Add(d)
	b.mu.Unlock()
	if d == 0 {
		return nil
	}
	return b.sleep(ctx, d)
}

// account returns the bytes granted, the time spent waiting, and the span
// from the first grant to the end of the last wait, which the rate bounds:
// span >= (granted - burst) / rate.
func (b *tokenBucket) account() (granted int64, waited, span time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.granted, b.waited, b.until.Sub(b.first)
}
