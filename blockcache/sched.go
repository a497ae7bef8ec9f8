package blockcache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// scheduler bounds the range requests in flight and gives foreground
// fetches priority: a background fetch starts only when no foreground fetch
// is waiting or running, and at most bgSlots background fetches run at once.
// A background fetch a foreground read comes to wait for is promoted.
//
// A yielding background fetch (the rate-limited pass over the whole image,
// not the profile's) also waits for the link to be quiet: it starts only
// once no foreground fetch has started, ended or been promoted for the
// quiet window, nor the scheduler been created (an image is opened because
// a container is about to start and fault). Gaps between a starting
// container's faults are short (its CPU work between reads); a background
// range started in one would hold the link while the next fault waits.
// The window applies for yieldSpan after the scheduler is created: reads
// that keep faulting past a start (a workload reading lazily all along)
// do not hold the background fetch back for ever.
type scheduler struct {
	mu                 sync.Mutex
	slots, bgSlots     int
	fgActive, bgActive int
	fgWaiting          int
	changed            chan struct{} // closed and replaced on every change

	quiet  time.Duration // 0: yielding fetches wait for no quiet window
	lastFg time.Time     // the last foreground activity
	until  time.Time     // when yielding fetches stop waiting for the window
	yields atomic.Int64  // yielding fetches that waited for the window
}

func newScheduler(slots, bgSlots int, quiet time.Duration) *scheduler {
	return &scheduler{slots: max(slots, 1), bgSlots: max(min(bgSlots, slots), 1), changed: make(chan struct{}),
		quiet: max(quiet, 0), lastFg: time.Now(), until: time.Now().Add(yieldSpan)}
}

// yieldSpan bounds how long after an image is opened its background fetch
// waits for the quiet window: longer than a container takes to start.
const yieldSpan = time.Minute

func (s *scheduler) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// promote wakes waiters so a background fetch whose priority was raised
// re-evaluates.
func (s *scheduler) promote() {
	s.mu.Lock()
	s.lastFg = time.Now()
	s.broadcastLocked()
	s.mu.Unlock()
}

// acquire waits for a slot at the priority fg says (read on every wake-up)
// and returns the function that releases it. A background fetch that
// yields also waits for the quiet window (see scheduler).
func (s *scheduler) acquire(ctx context.Context, fg *atomic.Bool, yield bool) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	waitingFg, counted := false, false
	defer func() {
		if waitingFg {
			s.fgWaiting--
		}
	}()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		isFg := fg.Load()
		if isFg && !waitingFg {
			s.fgWaiting++
			waitingFg = true
		}
		active := s.fgActive + s.bgActive
		var quietIn time.Duration // how long until the link is quiet
		if now := time.Now(); yield && !isFg && s.quiet > 0 && now.Before(s.until) {
			quietIn = min(s.quiet-now.Sub(s.lastFg), s.until.Sub(now))
		}
		switch {
		case isFg && active < s.slots:
			s.fgActive++
			s.lastFg = time.Now()
			return s.releaser(true), nil
		case !isFg && active < s.slots && s.bgActive < s.bgSlots && s.fgActive == 0 && s.fgWaiting == 0 && quietIn <= 0:
			s.bgActive++
			return s.releaser(false), nil
		}
		var quietC <-chan time.Time
		if quietIn > 0 {
			if !counted {
				s.yields.Add(1)
				counted = true
			}
			if timer == nil {
				timer = time.NewTimer(quietIn)
			} else {
				timer.Reset(quietIn)
			}
			quietC = timer.C
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
		case <-quietC:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			s.broadcastLocked()
			return nil, ctx.Err()
		}
	}
}

// waitQuiet returns once the link has been quiet for the window (see
// scheduler), or fg is set (a read came to wait for the fetch), holding
// nothing: a fetch that waits for the window must not keep what other
// fetches need (the store's fetch memory) meanwhile, or a fault of another
// range waits out the window too. A fetch past it then waits for a slot as
// any background fetch does.
func (s *scheduler) waitQuiet(ctx context.Context, fg *atomic.Bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	counted := false
	for {
		now := time.Now()
		if fg.Load() || s.quiet <= 0 || !now.Before(s.until) {
			return nil
		}
		quietIn := min(s.quiet-now.Sub(s.lastFg), s.until.Sub(now))
		if quietIn <= 0 {
			return nil
		}
		if !counted {
			s.yields.Add(1)
			counted = true
		}
		if timer == nil {
			timer = time.NewTimer(quietIn)
		} else {
			timer.Reset(quietIn)
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		}
		s.mu.Lock()
	}
}

func (s *scheduler) releaser(fg bool) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if fg {
				s.fgActive--
				s.lastFg = time.Now()
			} else {
				s.bgActive--
			}
			s.broadcastLocked()
			s.mu.Unlock()
		})
	}
}
