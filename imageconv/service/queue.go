package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// ErrQueueFull means the queue holds WithMaxQueue jobs already.
var ErrQueueFull = errors.New("conversion queue full")

// job is one image to convert, as its file in the state dir holds it.
type job struct {
	// Key names the job: REGISTRY/REPOSITORY@DIGEST (or :TAG).
	Key string `json:"key"`
	// Origin says what queued it: "event", "request" or "index".
	Origin string    `json:"origin"`
	Queued time.Time `json:"queued"`
	// Attempts counts the runs that the registry cut short; NotBefore
	// delays the next.
	Attempts  int       `json:"attempts,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
}

// fileName is the job's file in the queue dir: named by a hash, as keys
// hold '/' and ':'.
func (j *job) fileName() string {
	sum := sha256.Sum256([]byte(j.Key))
	return hex.EncodeToString(sum[:16]) + ".json"
}

// queue is the persistent job queue: one file per job in dir, written
// before add returns and removed by finish. Jobs run in the order queued,
// except those waiting for a retry.
type queue struct {
	dir string
	max int

	mu      sync.Mutex
	jobs    map[string]*job // queued or running, by key
	pending []*job          // queued, oldest first
	running map[string]bool
	wake    chan struct{}
	// writeErr is the last failure to write the queue, "" once a write
	// succeeds again: the service is unhealthy meanwhile.
	writeErr string
}

// openQueue reads the jobs left in dir by an earlier run (in the order
// they were queued) and removes temporary files a crash left.
func openQueue(ctx context.Context, dir string, max int) (*queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	q := &queue{dir: dir, max: max, jobs: map[string]*job{}, running: map[string]bool{}, wake: make(chan struct{}, 1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	log := zerolog.Ctx(ctx)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(p)
			continue
		}
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		var j job
		b, err := os.ReadFile(p)
		if err == nil {
			err = json.Unmarshal(b, &j)
		}
		if err == nil && (j.Key == "" || j.fileName() != e.Name()) {
			err = errors.New("not a job file of this service")
		}
		if err != nil {
			// Written atomically, so only another hand makes one like
			// this: keep it aside for a person to look at.
			log.Error().Err(err).Str("file", p).Msg("unreadable job file set aside as .bad")
			os.Rename(p, p+".bad")
			continue
		}
		if q.jobs[j.Key] == nil {
			q.jobs[j.Key] = &j
			q.pending = append(q.pending, &j)
		}
	}
	sort.SliceStable(q.pending, func(a, b int) bool { return q.pending[a].Queued.Before(q.pending[b].Queued) })
	return q, nil
}

// add queues j unless a job of its key is queued or running (added is
// then false). j's file is on disk when add returns.
func (q *queue) add(j *job) (added bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.jobs[j.Key] != nil {
		return false, nil
	}
	if len(q.jobs) >= q.max {
		return false, fmt.Errorf("%w (%d jobs)", ErrQueueFull, q.max)
	}
	if err := q.write(j); err != nil {
		return false, err
	}
	q.jobs[j.Key] = j
	q.pending = append(q.pending, j)
	q.signal()
	return true, nil
}

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// next waits for a job that may run now, marks it running and returns it.
func (q *queue) next(ctx context.Context) (*job, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		q.mu.Lock()
		now := time.Now()
		var wait time.Duration = -1
		for i, j := range q.pending {
			if d := j.NotBefore.Sub(now); d > 0 {
				if wait < 0 || d < wait {
					wait = d
				}
				continue
			}
			q.pending = append(q.pending[:i:i], q.pending[i+1:]...)
			q.running[j.Key] = true
			if len(q.pending) > 0 {
				q.signal() // another worker may take the next
			}
			q.mu.Unlock()
			return j, nil
		}
		q.mu.Unlock()
		var (
			t     *time.Timer
			timer <-chan time.Time
		)
		if wait >= 0 {
			t = time.NewTimer(wait)
			timer = t.C
		}
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// finish removes the job: it has an outcome.
func (q *queue) finish(j *job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, j.Key)
	delete(q.jobs, j.Key)
	err := os.Remove(filepath.Join(q.dir, j.fileName()))
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}

// retry queues the running job j again, to run after delay.
func (q *queue) retry(j *job, delay time.Duration) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	j.Attempts++
	j.NotBefore = time.Now().Add(delay)
	delete(q.running, j.Key)
	q.pending = append(q.pending, j)
	q.signal()
	return q.write(j)
}

// release puts the running job j back in the queue as it was: the service
// is stopping and the next start runs it.
func (q *queue) release(j *job) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, j.Key)
	q.pending = append([]*job{j}, q.pending...)
}

// depth returns the jobs queued (waiting) and running.
func (q *queue) depth() (queued, running int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending), len(q.running)
}

func (q *queue) health() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.writeErr
}

// write stores j's file atomically: a crash leaves the old file or the
// new one, never a part. Called with q.mu held.
func (q *queue) write(j *job) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("writing job %s to %s: %w", j.Key, q.dir, err)
			q.writeErr = err.Error()
		} else {
			q.writeErr = ""
		}
	}()
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(q.dir, ".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename, a no-op
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(q.dir, j.fileName())); err != nil {
		return err
	}
	d, err := os.Open(q.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
