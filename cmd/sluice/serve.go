package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/nbdserver"
)

type serveFlags struct {
	socket, tcp, cacheDir, cacheSize, rate, platform, memCache string
	allowRemote                                                bool
	readTimeout                                                time.Duration
	concurrency                                                int
}

func newServe(g *globals) *cobra.Command {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "serve [--plain-http] --socket PATH [--tcp 127.0.0.1:PORT] [--cache-dir DIR] [--cache-size SIZE] IMAGE...",
		Short: "Serve the flattened ext4 image of each IMAGE as a read-only NBD export, fetched lazily",
		Long: `Serve looks up each IMAGE's sluice artifact and serves its flattened ext4 image
as a read-only NBD export named by the reference exactly as given; the first
IMAGE is also the default export (the empty name). Blocks are fetched from the
registry only when read (4 KiB-aligned requests, whole chunks fetched,
verified against their sha256 and kept in the on-disk cache, which all
images share); the rest streams in the background at --background-rate.

The unix socket is readable by its owner only. --tcp accepts loopback
addresses unless --allow-remote is given. Stop with Ctrl-C or SIGTERM.`,
		Example: `  sluice serve --socket /run/sluice/nbd.sock registry.example.com/app:v1
  nbdinfo 'nbd+unix:///?socket=/run/sluice/nbd.sock'
  nbdfuse -r /mnt/app 'nbd+unix:///registry.example.com/app:v1?socket=/run/sluice/nbd.sock'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return fmt.Errorf("%s needs at least one IMAGE; see %s --help", cmd.CommandPath(), cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return serve(cmd.Context(), g, f, args) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "socket", "", "unix socket to serve on (required; created mode 0600)")
	fl.StringVar(&f.tcp, "tcp", "", "also serve on this TCP address, e.g. 127.0.0.1:10809 (loopback only unless --allow-remote)")
	fl.BoolVar(&f.allowRemote, "allow-remote", false, "let --tcp listen on a non-loopback address (NBD has no authentication: anyone who can connect can read the images)")
	fl.StringVar(&f.cacheDir, "cache-dir", "/var/cache/sluice/chunks", "directory of the on-disk chunk cache, shared by all images")
	fl.StringVar(&f.cacheSize, "cache-size", "10GiB", "bound of the chunk cache; least recently used chunks are evicted")
	fl.StringVar(&f.memCache, "memory-cache", "8MiB", "chunks also kept in memory, on top of the on-disk cache (warm reads are served from the chunk files either way)")
	fl.StringVar(&f.rate, "background-rate", "50MiB", "bytes per second fetched in the background once the prefetch profile is done (0: no background fetch)")
	fl.StringVar(&f.platform, "platform", "", "platform of multi-platform IMAGEs (default: this machine's, linux/ARCH)")
	fl.DurationVar(&f.readTimeout, "read-timeout", 30*time.Second, "a read that cannot be served in this time fails with EIO (the connection stays up)")
	fl.IntVar(&f.concurrency, "fetch-concurrency", 4, "range requests in flight per image")
	_ = cmd.MarkFlagRequired("socket")
	return cmd
}

func serve(ctx context.Context, g *globals, f *serveFlags, images []string) error {
	log := g.log
	ctx = log.WithContext(ctx)
	cacheSize, err := cliutil.ParseSize(f.cacheSize)
	if err != nil {
		return fmt.Errorf("--cache-size: %w", err)
	}
	rate, err := cliutil.ParseSize(f.rate)
	if err != nil {
		return fmt.Errorf("--background-rate: %w", err)
	}
	memCache, err := cliutil.ParseSize(f.memCache)
	if err != nil {
		return fmt.Errorf("--memory-cache: %w", err)
	}
	// Keep the heap near what it needs, not twice that: unless the user
	// set GOMEMLIMIT, ask the collector to work harder past a soft limit.
	// The limit sits above the live set of a busy server (read buffers
	// up to the NBD budget, the memory cache, fetches in flight: 65-80 MB
	// with ten images read at once and the 8 MiB memory cache), so that
	// collections do not run back to back.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(88<<20 + memCache)
	}
	if f.tcp != "" {
		if err := checkLoopback(f.tcp, f.allowRemote); err != nil {
			return fmt.Errorf("--tcp: %w", err)
		}
	}
	lookupOpts, err := commonOptions(g, f.platform)
	if err != nil {
		return err
	}
	store, err := blockcache.OpenStore(ctx, f.cacheDir, cacheSize, blockcache.WithHotBytes(memCache))
	if err != nil {
		return err
	}
	defer store.Close()

	var fetchOpts []blockcache.FetchOption
	if g.plainHTTP {
		fetchOpts = append(fetchOpts, blockcache.WithPlainHTTP())
	}
	var exports []nbdserver.Export
	var opened []*blockcache.Image
	defer func() {
		for _, im := range opened {
			im.Close()
		}
	}()
	for _, image := range images {
		art, err := imageconv.Lookup(ctx, image, lookupOpts...)
		if err != nil {
			return err
		}
		im, err := blockcache.Open(ctx, art, store,
			blockcache.WithFetchOptions(fetchOpts...),
			blockcache.WithBackgroundRate(rate),
			blockcache.WithReadTimeout(f.readTimeout),
			blockcache.WithConcurrency(f.concurrency))
		if err != nil {
			return fmt.Errorf("%s: %w", image, err)
		}
		opened = append(opened, im)
		exports = append(exports, nbdserver.Export{Name: image, Description: art.Repo.String() + "@" + art.Descriptor.Digest.String(), Backend: im})
		log.Info().Str("export", image).Str("artifact", art.Descriptor.Digest.String()).
			Int64("size", art.Index.ImageSize).Int("chunks", len(art.Index.Chunks)).Msg("serving")
	}
	srv, err := nbdserver.New(exports, nbdserver.WithLogger(log), nbdserver.WithBufferBudget(32<<20))
	if err != nil {
		return err
	}
	listeners, err := listen(f)
	if err != nil {
		return err
	}
	eg, ctx := errgroup.WithContext(ctx)
	for _, l := range listeners {
		eg.Go(func() error { return srv.Serve(ctx, l) })
	}
	err = eg.Wait()
	os.Remove(f.socket)
	for i, im := range opened {
		s := im.Stats()
		log.Info().Str("export", images[i]).Int64("fetched_bytes", s.BytesFetched).
			Float64("percent_complete", s.PercentComplete).Msg("stopped")
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// listen opens the unix socket (owner-only from birth) and the TCP port.
func listen(f *serveFlags) ([]net.Listener, error) {
	if fi, err := os.Lstat(f.socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--socket %s exists and is not a socket", f.socket)
		}
		if c, err := net.Dial("unix", f.socket); err == nil {
			c.Close()
			return nil, fmt.Errorf("--socket %s is in use by another server", f.socket)
		}
		os.Remove(f.socket) // stale, from a server that died
	}
	old := syscall.Umask(0o077)
	ul, err := net.Listen("unix", f.socket)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--socket: %w", err)
	}
	if err := os.Chmod(f.socket, 0o600); err != nil {
		ul.Close()
		return nil, err
	}
	ls := []net.Listener{ul}
	if f.tcp != "" {
		tl, err := net.Listen("tcp", f.tcp)
		if err != nil {
			ul.Close()
			return nil, fmt.Errorf("--tcp: %w", err)
		}
		ls = append(ls, tl)
	}
	return ls, nil
}

func checkLoopback(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if allowRemote {
		return nil
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("%s is not a loopback address; NBD has no authentication, so pass --allow-remote to serve other hosts", host)
}
