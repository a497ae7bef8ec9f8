// Command demo is `make demo` (through scripts/demo.sh): a python3 app
// image with a few hundred MiB it never reads, served by a local registry
// through a throttled link, started once with a full pull and once lazily
// through sluiced, on containerd through CRI; it prints how long each took
// to the app's first output line and what each fetched. Run it as root; the
// harness is bench/startup/harness (Demo).
//
//	go run ./bench/startup/demo                          # 100 Mbit/s, 20 ms RTT, 300 MiB
//	go run ./bench/startup/demo -bandwidth 1G -rtt 2ms -data-mib 500
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/bench/startup/harness"
)

func main() {
	bandwidth := flag.String("bandwidth", envOr("SLUICE_DEMO_BANDWIDTH", "100M"), "the link's bandwidth in bit/s, such as 100M or 1G (env SLUICE_DEMO_BANDWIDTH)")
	rtt := flag.String("rtt", envOr("SLUICE_DEMO_RTT", "20ms"), "the link's round-trip time, added once per request (env SLUICE_DEMO_RTT)")
	dataMiB := flag.String("data-mib", envOr("SLUICE_DEMO_DATA_MIB", "300"), "MiB of assets in the image that the app never reads (env SLUICE_DEMO_DATA_MIB)")
	containerd := flag.String("containerd", "1.6", "containerd version: 1.6 or 2")
	cache := flag.String("cache", envOr("SLUICE_BENCH_CACHE", "/var/cache/sluice-bench"), "cache of built images, kept between runs (env SLUICE_BENCH_CACHE)")
	dropCaches := flag.Bool("drop-caches", true, "drop the page cache before each run")
	flag.Parse()

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = log.WithContext(ctx)
	if err := run(ctx, *bandwidth, *rtt, *dataMiB, *containerd, *cache, *dropCaches); err != nil {
		log.Error().Err(err).Msg("demo failed")
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, bandwidth, rttFlag, dataFlag, containerd, cache string, dropCaches bool) error {
	bits, err := harness.ParseBandwidth(bandwidth)
	if err != nil {
		return err
	}
	rtt, err := time.ParseDuration(rttFlag)
	if err != nil || rtt < 0 {
		return fmt.Errorf("rtt %q: want a duration such as 20ms", rttFlag)
	}
	dataMiB, err := strconv.Atoi(dataFlag)
	if err != nil || dataMiB < 1 {
		return fmt.Errorf("data-mib %q: want a whole number of MiB, at least 1", dataFlag)
	}
	versions, err := harness.ParseContainerds(containerd)
	if err != nil {
		return err
	}
	if len(versions) != 1 {
		return fmt.Errorf("containerd %q: want one version", containerd)
	}
	cfg := harness.DemoConfig{
		DataMiB:    dataMiB,
		Link:       harness.Link{Name: fmt.Sprintf("%s-%s", bandwidth, rtt), BitsPerSecond: bits, RTT: rtt},
		Containerd: versions[0],
		CacheDir:   cache,
		DropCaches: dropCaches,
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	if cfg.RepoRoot, err = harness.RepoRoot(wd); err != nil {
		return err
	}
	// /var/tmp: on disk, as a node keeps its state.
	if cfg.WorkDir, err = os.MkdirTemp("/var/tmp", "sluice-demo-"); err != nil {
		return err
	}
	defer os.RemoveAll(cfg.WorkDir)
	zerolog.Ctx(ctx).Info().Msg("building sluice, sluiced and the throttle proxy")
	if cfg.Binaries, err = harness.Build(ctx, filepath.Join(cfg.WorkDir, "bin"), false); err != nil {
		return err
	}
	res, err := harness.Demo(ctx, cfg)
	if err != nil {
		return err
	}
	return res.Table(os.Stdout)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
