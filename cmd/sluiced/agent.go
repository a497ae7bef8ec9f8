package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/nbdserver"
	"github.com/sluice-project/sluice/snapshot"
)

// agent is a running sluiced: the chunk store, one NBD server for every
// streamed image, the snapshotter served over gRPC, and /healthz + /metrics.
type agent struct {
	cfg   Config
	log   zerolog.Logger
	store *blockcache.Store
	nbd   *nbdserver.Server
	src   *registrySource
	sn    *snapshot.Snapshotter
	rpc   *grpc.Server
	web   *http.Server

	metricsAddr string // where /metrics listens, once started

	health    health
	stopNBD   context.CancelFunc
	serving   sync.WaitGroup
	failed    chan error // a server that stopped on its own
	closeOnce sync.Once
	closeErr  error
}

// startAgent starts every part in dependency order; on failure it undoes
// what it started. ctx carries the logger and bounds the start only.
func startAgent(ctx context.Context, cfg Config) (_ *agent, err error) {
	log := *zerolog.Ctx(ctx)
	a := &agent{cfg: cfg, log: log, failed: make(chan error, 3)}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	// Sockets first: another live agent is the most likely trouble and
	// this says so plainly.
	// In a fixed order, so the error names the same field every time.
	for _, s := range []struct{ field, path string }{{"address", cfg.Address}, {"nbd_socket", cfg.NBDSocket}} {
		if err := claimSocket(log, s.path); err != nil {
			return nil, fmt.Errorf("%s: %w", s.field, err)
		}
	}

	a.store, err = blockcache.OpenStore(ctx, cfg.Cache.Dir, cfg.Cache.size, blockcache.WithHotBytes(cfg.Cache.memoryCache))
	if err != nil {
		return nil, fmt.Errorf("cache.dir: %w", err)
	}

	a.nbd, err = nbdserver.New(nil, nbdserver.WithLogger(log), nbdserver.WithBufferBudget(32<<20))
	if err != nil {
		return nil, err
	}
	nl, err := listenUnix(cfg.NBDSocket)
	if err != nil {
		return nil, fmt.Errorf("nbd_socket: %w", err)
	}
	nbdCtx, stopNBD := context.WithCancel(context.WithoutCancel(ctx))
	a.stopNBD = stopNBD
	a.goServe("nbd", func() error { return a.nbd.Serve(nbdCtx, nl) })

	att, err := selectAttacher(ctx, cfg, a.nbd)
	if err != nil {
		return nil, err
	}
	policy, err := snapshot.ParsePolicy(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	imageOpts := []blockcache.Option{
		blockcache.WithReadTimeout(cfg.Cache.readTimeout),
		blockcache.WithConcurrency(cfg.Cache.FetchConcurrency),
		blockcache.WithBackgroundRate(cfg.Cache.backgroundRate),
	}
	keychain := newKeychain(cfg.CredentialsFile)
	if cfg.CredentialsFile != "" {
		present, err := fileKeychain{path: cfg.CredentialsFile}.check()
		if err != nil {
			return nil, fmt.Errorf("credentials_file: %w", err)
		}
		log.Info().Str("credentials_file", cfg.CredentialsFile).Bool("present", present).
			Msg("registry credentials: node file, then docker config and credential helpers")
	}
	a.src = newRegistrySource(ctx, a.store, a.nbd, cfg.NBDSocket, filepath.Join(cfg.Root, "artifacts"), keychain, cfg.PlainHTTP, imageOpts...)

	a.sn, err = snapshot.New(ctx, cfg.Root, a.src, att, snapshot.WithPolicy(policy))
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	// Recovery has adopted what it could; memos nobody used for a day are
	// of images gone while no agent ran.
	a.src.pruneMemos(24 * time.Hour)

	gl, err := listenUnix(cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	a.rpc = grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(a.rpc, snapshotservice.FromSnapshotter(a.sn))
	a.goServe("snapshotter", func() error { return a.rpc.Serve(gl) })

	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return nil, fmt.Errorf("metrics_address: %w", err)
		}
		a.metricsAddr = ml.Addr().String()
		a.web = &http.Server{Handler: a.metricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		a.goServe("metrics", func() error { return a.web.Serve(ml) })
	}
	log.Info().Str("address", cfg.Address).Str("nbd_socket", cfg.NBDSocket).Str("metrics_address", cfg.MetricsAddress).
		Str("policy", string(policy)).Str("root", cfg.Root).Str("cache_dir", cfg.Cache.Dir).Msg("sluiced ready")
	return a, nil
}

// goServe runs a server loop, marking the agent unhealthy if it stops
// before close.
func (a *agent) goServe(part string, serve func() error) {
	a.health.set(part, true, "")
	a.serving.Add(1)
	go func() {
		defer a.serving.Done()
		err := serve()
		if errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.health.set(part, false, "stopped")
		if err != nil {
			a.health.set(part, false, err.Error())
			a.failed <- fmt.Errorf("%s server: %w", part, err)
		}
	}()
}

// wait returns when ctx is done (nil) or a server failed.
func (a *agent) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-a.failed:
		return err
	}
}

// close stops serving: no new snapshotter calls (those in flight get a
// while to finish), image mounts stay for the next agent to adopt, exports
// and the NBD server close (the portable attacher's relays retry until the
// next agent serves them), and the store closes.
func (a *agent) close() error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.rpc != nil {
			done := make(chan struct{})
			go func() { a.rpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				a.rpc.Stop()
			}
		}
		if a.web != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, a.web.Shutdown(ctx))
			cancel()
		}
		if a.sn != nil {
			a.src.closing.Store(true)
			errs = append(errs, a.sn.Close())
		}
		if a.stopNBD != nil {
			a.stopNBD()
		}
		a.serving.Wait()
		if a.store != nil {
			errs = append(errs, a.store.Close())
		}
		a.closeErr = errors.Join(errs...)
		if a.sn != nil {
			a.log.Info().Err(a.closeErr).Msg("sluiced stopped; image mounts stay for the next start")
		}
	})
	return a.closeErr
}

// selectAttacher picks how exports become block devices and logs why.
func selectAttacher(ctx context.Context, cfg Config, srv snapshot.ExportServer) (snapshot.Attacher, error) {
	att, reason, err := snapshot.NewAttacher(ctx, snapshot.AttacherConfig{
		Mode: cfg.Attacher, StateDir: cfg.Root, Server: srv, Kernel: cfg.Kernel.options(),
	})
	if err != nil {
		return nil, err
	}
	zerolog.Ctx(ctx).Info().Str("attacher", att.Name()).Str("configured", cfg.Attacher).Msg(reason)
	return att, nil
}

// claimSocket makes path's directory and removes a socket a dead agent
// left there; a socket something still listens on is an error.
func claimSocket(log zerolog.Logger, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another sluiced is running", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	log.Info().Str("socket", path).Msg("removed a stale socket left by an agent that is gone")
	return nil
}

// listenUnix listens on path, owner-only from birth.
func listenUnix(path string) (net.Listener, error) {
	old := syscall.Umask(0o077)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
