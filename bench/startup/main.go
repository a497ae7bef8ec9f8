// Command startup measures pod start time through CRI, sluice lazy pull
// against a full pull, and writes the report (markdown, and every sample as
// JSON) under bench/results/. Run it as root through `make bench-startup`;
// the harness is bench/startup/harness.
//
//	go run ./bench/startup                      # the default subset
//	go run ./bench/startup -links all -runs 5   # the whole link matrix
//	go run ./bench/startup -smoke               # busybox, one run, one link
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/bench/startup/harness"
)

func main() {
	images := flag.String("images", strings.Join(harness.RecipeNames(), ","), "images to start, comma-separated: "+strings.Join(harness.RecipeNames(), ", "))
	modes := flag.String("modes", "full,lazy,lazy-nobg,profile", "modes, comma-separated: full (containerd's overlayfs, ordinary pull), lazy (sluiced, default config), lazy-nobg (sluiced, background fetch off; fresh nodes only), profile (only says what it waits on)")
	states := flag.String("states", "fresh,shared-base", "node states, comma-separated: fresh (a new node), shared-base (another image with the same base ran first)")
	containerds := flag.String("containerd", "1.6,2", "containerd versions, comma-separated: 1.6, 2")
	sharedImages := flag.String("shared-base-images", "python3,numpy", "images measured on a shared-base node, comma-separated, or all")
	detail := flag.String("detail-containerd", "1.6", "containerd versions that also measure mode lazy-nobg and the shared-base state (the others: full and lazy on fresh nodes), or all")
	links := flag.String("links", "default", "link profiles: default (each image on its own links: "+defaultLinksHelp()+"), all (every image on every link), or names")
	runs := flag.Int("runs", 3, "cold runs of each image, mode, containerd and link (the median is reported)")
	out := flag.String("out", "bench/results", "directory the report is written to (startup.md, startup.json)")
	cache := flag.String("cache", envOr("SLUICE_BENCH_CACHE", "/var/cache/sluice-bench"), "cache of built images, kept between runs")
	work := flag.String("work", "", "directory for node state and the registry (default: a new dir in /var/tmp)")
	dropCaches := flag.Bool("drop-caches", true, "drop the page cache before each run")
	smoke := flag.Bool("smoke", false, "busybox, one run, link 1G-2ms, containerd 1.6, fresh node (overrides -images, -runs, -links, -containerd, -states)")
	flag.Parse()

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly}).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = log.WithContext(ctx)
	if *smoke {
		*images, *runs, *links, *containerds, *states = "busybox", 1, "1G-2ms", "1.6", "fresh"
	}
	if err := run(ctx, *images, *modes, *states, *containerds, *sharedImages, *detail, *links, *runs, *out, *cache, *work, *dropCaches); err != nil {
		log.Error().Err(err).Msg("bench/startup failed")
		os.Exit(1)
	}
}

func run(ctx context.Context, images, modes, states, containerds, sharedImages, detail, links string, runs int, out, cache, work string, dropCaches bool) error {
	cfg := harness.Config{Images: strings.Split(images, ","), Runs: runs, CacheDir: cache, DropCaches: dropCaches}
	var err error
	if cfg.Modes, err = harness.ParseModes(modes); err != nil {
		return err
	}
	if cfg.States, err = harness.ParseStates(states); err != nil {
		return err
	}
	if cfg.Containerds, err = harness.ParseContainerds(containerds); err != nil {
		return err
	}
	if sharedImages != "all" {
		cfg.SharedBaseImages = strings.Split(sharedImages, ",")
		for _, im := range cfg.SharedBaseImages {
			if !slices.Contains(harness.RecipeNames(), im) {
				return fmt.Errorf("-shared-base-images: image %q: want one of %s, or all", im, strings.Join(harness.RecipeNames(), ", "))
			}
		}
	}
	if detail != "all" {
		if cfg.DetailContainerds, err = harness.ParseContainerds(detail); err != nil {
			return fmt.Errorf("-detail-containerd: %w", err)
		}
	}
	if links == "default" {
		if cfg.Links, cfg.ImageLinks, err = harness.DefaultPlan(cfg.Images); err != nil {
			return err
		}
	} else if cfg.Links, err = harness.ParseLinks(links); err != nil {
		return err
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	if cfg.RepoRoot, err = harness.RepoRoot(wd); err != nil {
		return err
	}
	if work == "" {
		// /var/tmp: on disk, where a node keeps its state (a tmpfs /tmp
		// would keep images in memory, past any page cache drop).
		if work, err = os.MkdirTemp("/var/tmp", "sluice-bench-startup-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	cfg.WorkDir = work
	if cfg.Binaries, err = harness.Build(ctx, filepath.Join(work, "bin"), false); err != nil {
		return err
	}
	rep, err := harness.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := rep.Charts(out); err != nil {
		return err
	}
	md, js := filepath.Join(out, "startup.md"), filepath.Join(out, "startup.json")
	if err := writeFile(md, rep.Markdown); err != nil {
		return err
	}
	if err := writeFile(js, rep.JSON); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("markdown", md).Str("json", js).Msg("report written")
	for _, s := range rep.Samples {
		if s.Err != "" {
			return fmt.Errorf("%s %s %s %s run %d failed (see the report): %s", s.Link, s.Image, s.Containerd, s.Mode, s.Run, strings.SplitN(s.Err, "\n", 2)[0])
		}
	}
	return nil
}

func writeFile(path string, write func(w io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	return f.Close()
}

// defaultLinksHelp says which links a default run measures each image on.
func defaultLinksHelp() string {
	_, per, err := harness.DefaultPlan(harness.RecipeNames())
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, nm := range harness.RecipeNames() {
		out = append(out, nm+" "+strings.Join(per[nm], "+"))
	}
	return strings.Join(out, ", ")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
