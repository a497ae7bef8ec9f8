package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/blockcache/source"
	"github.com/sluice-project/sluice/cmd/internal/cliutil"
	"github.com/sluice-project/sluice/nbdserver"
)

type serveFlags struct {
	socket, tcp, cacheDir, cacheSize, rate, platform, memCache string
	registryConfigPath, readahead                              string
	allowRemote, metadataFirst                                 bool
	readTimeout, quiet                                         time.Duration
	concurrency                                                int
	faultAround                                                float64
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
	fl.StringVar(&f.cacheDir, "cache-dir", blockcache.DefaultStoreDir, "directory of the on-disk chunk cache, shared by all images")
	fl.StringVar(&f.cacheSize, "cache-size", cliutil.FormatSizeExact(blockcache.DefaultStoreSize), "bound of the chunk cache; least recently used chunks are evicted")
	fl.StringVar(&f.memCache, "memory-cache", cliutil.FormatSizeExact(blockcache.DefaultHotBytes), "chunks also kept in memory, on top of the on-disk cache (warm reads are served from the chunk files either way)")
	fl.StringVar(&f.rate, "background-rate", cliutil.FormatSizeExact(blockcache.DefaultBackgroundRate), "bytes per second fetched in the background once the prefetch profile is done (0: no background fetch)")
	fl.StringVar(&f.readahead, "readahead", cliutil.FormatSizeExact(blockcache.DefaultReadahead), "a fault continuing a sequential stream of faults fetches ahead of it, doubling from one chunk up to this many bytes of image per range request (0: off)")
	fl.Float64Var(&f.faultAround, "fault-around", blockcache.DefaultFaultAround, "a fault continuing no sequential stream fetches the chunks after its own too, up to this many round trips' worth of the measured link to the registry, within --readahead (0: off)")
	fl.BoolVar(&f.metadataFirst, "metadata-first", true, "fetch each image's filesystem metadata (superblock, group descriptors, bitmaps, inode tables, directories) as soon as it is served, before its first reads")
	fl.DurationVar(&f.quiet, "background-quiet", blockcache.DefaultBackgroundQuiet, "background fetch starts no range request until reads have stopped faulting (and the image has been open) this long (0: it yields fetch slots only)")
	fl.StringVar(&f.platform, "platform", "", "platform of multi-platform IMAGEs (default: this machine's, linux/ARCH)")
	fl.DurationVar(&f.readTimeout, "read-timeout", blockcache.DefaultReadTimeout, "a read that cannot be served in this time fails with EIO (the connection stays up)")
	fl.IntVar(&f.concurrency, "fetch-concurrency", blockcache.DefaultConcurrency, "range requests in flight per image")
	fl.StringVar(&f.registryConfigPath, "registry-config-path", "", "containerd's registry host configuration (hosts.toml per registry, e.g. /etc/containerd/certs.d): fetch through the mirrors it lists, then the registry (\"\": the registry alone)")
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
	readahead, err := cliutil.ParseSize(f.readahead)
	if err != nil {
		return fmt.Errorf("--readahead: %w", err)
	}
	memCache, err := cliutil.ParseSize(f.memCache)
	if err != nil {
		return fmt.Errorf("--memory-cache: %w", err)
	}
	cliutil.SetMemoryLimit(memCache)
	if f.tcp != "" && !f.allowRemote {
		if err := cliutil.CheckLoopback(f.tcp); err != nil {
			return fmt.Errorf("--tcp: %w; NBD has no authentication, so pass --allow-remote to serve other hosts", err)
		}
	}
	srcOpts := []source.Option{source.WithImageOptions(
		blockcache.WithBackgroundRate(rate),
		blockcache.WithBackgroundQuiet(f.quiet),
		blockcache.WithReadahead(readahead),
		blockcache.WithFaultAround(f.faultAround),
		blockcache.WithMetadataFirst(f.metadataFirst),
		blockcache.WithReadTimeout(f.readTimeout),
		blockcache.WithConcurrency(f.concurrency))}
	if g.plainHTTP {
		srcOpts = append(srcOpts, source.WithPlainHTTP())
	}
	if f.registryConfigPath != "" {
		hosts := registryhosts.New(f.registryConfigPath, registryhosts.WithMaxIdleConnsPerHost(f.concurrency))
		if err := hosts.Check(); err != nil {
			return fmt.Errorf("--registry-config-path: %w", err)
		}
		srcOpts = append(srcOpts, source.WithRegistryHosts(hosts))
	}
	if f.platform != "" {
		p, err := onePlatform(f.platform)
		if err != nil {
			return err
		}
		srcOpts = append(srcOpts, source.WithPlatform(p))
	}
	store, err := blockcache.OpenStore(ctx, f.cacheDir, cacheSize, blockcache.WithHotBytes(memCache))
	if err != nil {
		return err
	}
	defer store.Close()
	srv, err := nbdserver.New(nil, nbdserver.WithLogger(log))
	if err != nil {
		return err
	}
	src := source.New(ctx, store, cliutil.NBDExports{Server: srv}, srcOpts...)
	var opened []*source.Handle
	defer func() {
		for _, h := range opened {
			h.Close()
		}
	}()
	for _, image := range images {
		h, err := src.Open(ctx, source.Request{Image: image, Export: image})
		if err != nil {
			return err
		}
		opened = append(opened, h)
	}
	listeners, err := listen(log, f)
	if err != nil {
		return err
	}
	eg, ctx := errgroup.WithContext(ctx)
	for _, l := range listeners {
		eg.Go(func() error { return srv.Serve(ctx, l) })
	}
	err = eg.Wait()
	os.Remove(f.socket)
	for _, h := range opened {
		s := h.Image().Stats()
		log.Info().Str("export", h.Name()).Int64("fetched_bytes", s.BytesFetched).
			Float64("percent_complete", s.PercentComplete).Msg("stopped")
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// listen opens the unix socket and the TCP port.
func listen(log zerolog.Logger, f *serveFlags) ([]net.Listener, error) {
	ul, err := cliutil.ListenUnix(log, f.socket, "sluice serve")
	if err != nil {
		return nil, fmt.Errorf("--socket: %w", err)
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
