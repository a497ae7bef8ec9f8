package blockcache

import (
	"context"
	"sync"
	"sync/atomic"
)

// scheduler bounds the range requests in flight and gives foreground
// fetches priority: a background fetch starts only when no foreground fetch
// is waiting or running, and at most bgSlots background fetches run at once.
// A background fetch a foreground read comes to wait for is promoted.
type scheduler struct {
	mu                 sync.Mutex
	slots, bgSlots     int
	fgActive, bgActive int
	fgWaiting          int
	changed            chan struct{} // closed and replaced on every change
}

func newScheduler(slots, bgSlots int) *scheduler {
	return &scheduler{slots: max(slots, 1), bgSlots: max(min(bgSlots, slots), 1), changed: make(chan struct{})}
}

func (s *scheduler) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// promote wakes waiters so a background fetch whose priority was raised
// re-evaluates.
func (s *scheduler) promote() {
	s.mu.Lock()
	s.broadcastLocked()
	s.mu.Unlock()
}

// acquire waits for a slot at the priority fg says (read on every wake-up)
// and returns the function that releases it.
func (s *scheduler) acquire(ctx context.Context, fg *atomic.Bool) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	waitingFg := false
	defer func() {
		if waitingFg {
			s.fgWaiting--
		}
	}()
	for {
		isFg := fg.Load()
		if isFg && !waitingFg {
			s.fgWaiting++
			waitingFg = true
		}
		active := s.fgActive + s.bgActive
		switch {
		case isFg && active < s.slots:
			s.fgActive++
			return s.releaser(true), nil
		case !isFg && active < s.slots && s.bgActive < s.bgSlots && s.fgActive == 0 && s.fgWaiting == 0:
			s.bgActive++
			return s.releaser(false), nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			s.broadcastLocked()
			return nil, ctx.Err()
		}
	}
}

func (s *scheduler) releaser(fg bool) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if fg {
				s.fgActive--
			} else {
				s.bgActive--
			}
			s.broadcastLocked()
			s.mu.Unlock()
		})
	}
}
