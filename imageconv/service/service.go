package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// Service converts the images it is told about; see the package comment.
type Service struct {
	ctx      context.Context // New's: its logger
	o        *options
	queue    *queue
	workDir  string // jobs' work dirs, one per running job
	lock     *os.File
	verifier *signature.Verifier // of the sign key's public half, if any
	metrics  *metrics

	runMu   sync.Mutex
	running bool
}

// New opens the service's state in stateDir (the queue, left as an
// earlier run left it, so its jobs run again) and takes workDir for the
// conversions' files, removing what an earlier run left there. One
// service at a time may use stateDir: a second one is refused. ctx
// carries the logger.
func New(ctx context.Context, stateDir, workDir string, opts ...Option) (*Service, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	lock, err := lockDir(stateDir)
	if err != nil {
		return nil, err
	}
	s := &Service{ctx: ctx, o: o, lock: lock, workDir: filepath.Join(workDir, "sluice-convert-service")}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	// Jobs' work dirs left by a crash: their jobs are still queued and
	// start over.
	if err = os.RemoveAll(s.workDir); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	if err = os.MkdirAll(s.workDir, 0o700); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	if s.queue, err = openQueue(ctx, filepath.Join(stateDir, "queue"), o.maxQueue); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if o.signKey != nil {
		if s.verifier, err = signature.NewVerifier(o.signKey.Public()); err != nil {
			return nil, err
		}
	}
	s.metrics = newMetrics(s)
	queued, _ := s.queue.depth()
	zerolog.Ctx(ctx).Info().Int("queued", queued).Str("state_dir", stateDir).Str("work_dir", s.workDir).
		Int("max_parallel", o.maxParallel).Int64("max_image_size", o.maxSource).Bool("signing", o.signKey != nil).
		Msg("conversion service ready")
	return s, nil
}

// lockDir takes an exclusive lock on dir's lock file, released when the
// process ends however it ends.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("state dir %s: another conversion service uses it", dir)
		}
		return nil, fmt.Errorf("state dir %s: locking: %w", dir, err)
	}
	return f, nil
}

// Run converts queued jobs, at most WithMaxParallel at once, until ctx is
// done; conversions running then are cancelled and their jobs stay queued
// for the next start.
func (s *Service) Run(ctx context.Context) error {
	s.runMu.Lock()
	if s.running {
		s.runMu.Unlock()
		return errors.New("conversion service: already running")
	}
	s.running = true
	s.runMu.Unlock()
	defer func() {
		s.runMu.Lock()
		s.running = false
		s.runMu.Unlock()
	}()
	var wg sync.WaitGroup
	for range s.o.maxParallel {
		wg.Go(func() {
			for {
				j, err := s.queue.next(ctx)
				if err != nil {
					return
				}
				s.run(ctx, j)
			}
		})
	}
	wg.Wait()
	return nil
}

// Close releases the state dir. Call it after Run returns.
func (s *Service) Close() error { return s.lock.Close() }

// enqueue queues the job key unless it is queued or running; it returns
// the result to count.
func (s *Service) enqueue(key, origin string) (string, error) {
	added, err := s.queue.add(&job{Key: key, Origin: origin, Queued: time.Now().UTC()})
	switch {
	case errors.Is(err, ErrQueueFull):
		return resultQueueFull, err
	case err != nil:
		return resultQueueError, err
	case !added:
		return resultDuplicate, nil
	}
	return resultQueued, nil
}

func (s *Service) healthy() error {
	s.runMu.Lock()
	running := s.running
	s.runMu.Unlock()
	if !running {
		return errors.New("not converting (not started, or stopping)")
	}
	if msg := s.queue.health(); msg != "" {
		return errors.New(msg)
	}
	return nil
}

// Serve runs the service: the HTTP API (Handler) on l and the conversions
// (Run), until ctx is done or the listener fails; then it stops taking
// requests (those in flight get a few seconds), cancels the conversions
// running (their jobs stay queued) and returns.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return s.ctx }}
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { s.Run(runCtx); close(ran) }()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("serving on %s: %w", l.Addr(), err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutdownCtx)
	stopRun()
	<-ran
	zerolog.Ctx(s.ctx).Info().Msg("conversion service stopped; queued jobs stay for the next start")
	return err
}
