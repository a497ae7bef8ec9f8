package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/blockcache/source"
	"github.com/sluice-project/sluice/blockcache/source/crikeychain"
	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv/service/client"
	"github.com/sluice-project/sluice/nbdserver"
	"github.com/sluice-project/sluice/snapshot"
)

// agent is a running sluiced: the chunk store, one NBD server for every
// streamed image, the snapshotter served over gRPC, and /healthz + /metrics.
type agent struct {
	cfg    Config
	log    zerolog.Logger
	store  *blockcache.Store
	nbd    *nbdserver.Server
	src    *source.Source
	conv   *client.Client // nil without convert_service
	sn     *snapshot.Snapshotter
	rpc    *grpc.Server
	web    *http.Server
	cri    *crikeychain.Proxy // nil without cri_keychain.enable_keychain
	criRPC *grpc.Server

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
	a := &agent{cfg: cfg, log: log, failed: make(chan error, 4)}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	// Sockets first: another live agent is the most likely trouble and
	// this says so plainly. In a fixed order, so the error names the same
	// field every time.
	gl, err := cliutil.ListenUnix(log, cfg.Address, "sluiced")
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	nl, err := cliutil.ListenUnix(log, cfg.NBDSocket, "sluiced")
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("nbd_socket: %w", err)
	}
	defer func() {
		if err != nil {
			nl.Close()
			gl.Close()
		}
	}()

	a.store, err = blockcache.OpenStore(ctx, cfg.Cache.Dir, cfg.Cache.size, blockcache.WithHotBytes(cfg.Cache.memoryCache))
	if err != nil {
		return nil, fmt.Errorf("cache.dir: %w", err)
	}

	a.nbd, err = nbdserver.New(nil, nbdserver.WithLogger(log))
	if err != nil {
		return nil, err
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
	if cfg.CredentialsFile != "" {
		present, err := source.CheckCredentialsFile(cfg.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("credentials_file: %w", err)
		}
		log.Info().Str("credentials_file", cfg.CredentialsFile).Bool("present", present).
			Msg("registry credentials: node file, then docker config and credential helpers")
	}
	srcOpts := []source.Option{
		source.WithKeychain(source.Keychain(cfg.CredentialsFile)),
		source.WithSaveDir(filepath.Join(cfg.Root, "artifacts")),
		source.WithImageOptions(
			blockcache.WithReadTimeout(cfg.Cache.readTimeout),
			blockcache.WithConcurrency(cfg.Cache.FetchConcurrency),
			blockcache.WithBackgroundRate(cfg.Cache.backgroundRate),
			blockcache.WithBackgroundQuiet(cfg.Cache.backgroundQuiet),
			blockcache.WithReadahead(cfg.Cache.readahead),
			blockcache.WithFaultAround(cfg.Cache.FaultAround),
			blockcache.WithMetadataFirst(cfg.Cache.MetadataFirst)),
	}
	if policy == snapshot.PolicyFallback {
		// Under "require" a small image streams: its pull must not fail
		// for a size the user never asked about.
		srcOpts = append(srcOpts, source.WithStreamMinSize(cfg.streamMinSize))
	}
	if len(cfg.PlainHTTP) > 0 {
		srcOpts = append(srcOpts, source.WithPlainHTTP(cfg.PlainHTTP...))
	}
	if cfg.Registry.ConfigPath != "" {
		hosts := registryhosts.New(cfg.Registry.ConfigPath, registryhosts.WithMaxIdleConnsPerHost(cfg.Cache.FetchConcurrency))
		if err := hosts.Check(); err != nil {
			// Only that registry's images are refused (and pulled the
			// ordinary way): the others still stream.
			log.Error().Err(err).Msg("registry.config_path: its images cannot be streamed until the file is fixed")
		}
		srcOpts = append(srcOpts, source.WithRegistryHosts(hosts))
	}
	if v := cfg.Trust.verifier; v != nil {
		srcOpts = append(srcOpts, source.WithVerifier(v))
		for _, k := range v.Keys() {
			log.Info().Str("key", k.String()).Msg("trust: artifacts signed by this key")
		}
	}
	if cfg.ConvertService != "" {
		if a.conv, err = client.New(ctx, cfg.ConvertService); err != nil {
			return nil, fmt.Errorf("convert_service: %w", err)
		}
		srcOpts = append(srcOpts, source.WithConvertRequests(a.conv))
	}
	var criListener net.Listener
	if kc := cfg.CRIKeychain; kc.EnableKeychain {
		if criListener, err = cliutil.ListenUnix(log, kc.Address, "sluiced"); err != nil {
			return nil, fmt.Errorf("cri_keychain.address: %w", err)
		}
		defer func() {
			if err != nil {
				criListener.Close()
			}
		}()
		creds := crikeychain.NewStore()
		// A pull with new credentials tries an image the snapshotter
		// could not stream a moment ago again.
		retry := crikeychain.OnCredentials(func(image string) { a.sn.Retry(image) })
		if a.cri, err = crikeychain.NewProxy(ctx, creds, kc.ImageServicePath, retry); err != nil {
			return nil, fmt.Errorf("cri_keychain.image_service_path: %w", err)
		}
		srcOpts = append(srcOpts, source.WithPullCredentials(creds))
	}
	a.src = source.New(ctx, a.store, cliutil.NBDExports{Server: a.nbd}, srcOpts...)

	a.sn, err = snapshot.New(ctx, cfg.Root, streams{src: a.src, socket: cfg.NBDSocket}, att, snapshot.WithPolicy(policy))
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	// Recovery has adopted what it could; saved artifacts nobody used for
	// a day are of images gone while no agent ran.
	a.src.PruneSaved(24 * time.Hour)
	a.rpc = grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(a.rpc, snapshotservice.FromSnapshotter(a.sn))
	a.goServe("snapshotter", func() error { return a.rpc.Serve(gl) })
	if a.cri != nil {
		// After the snapshotter: a pull it forwards may reach it at once.
		a.criRPC = grpc.NewServer(crikeychain.ServerOptions()...)
		a.cri.Register(a.criRPC)
		a.goServe("cri_keychain", func() error { return a.criRPC.Serve(criListener) })
		log.Info().Str("address", cfg.CRIKeychain.Address).Str("image_service_path", cfg.CRIKeychain.ImageServicePath).
			Msg("CRI keychain: serving the CRI image service; kubelet's --image-service-endpoint must name this socket")
	}

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
		Str("policy", string(policy)).Str("trust", cfg.Trust.Policy).Str("root", cfg.Root).Str("cache_dir", cfg.Cache.Dir).Msg("sluiced ready")
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
		// Pulls forwarded to containerd first: they may wait on the
		// snapshotter.
		for _, s := range []*grpc.Server{a.criRPC, a.rpc} {
			if s != nil {
				stopGracefully(s, 10*time.Second)
			}
		}
		if a.cri != nil {
			errs = append(errs, a.cri.Close())
		}
		if a.web != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, a.web.Shutdown(ctx))
			cancel()
		}
		if a.sn != nil {
			a.src.Shutdown()
			errs = append(errs, a.sn.Close())
		}
		if a.stopNBD != nil {
			a.stopNBD()
		}
		if a.conv != nil {
			a.conv.Close()
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

// stopGracefully lets a gRPC server's calls in flight finish for up to d,
// then ends them.
func stopGracefully(s *grpc.Server, d time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.Stop()
	}
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
