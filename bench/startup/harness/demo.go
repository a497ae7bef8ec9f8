package harness

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testenv"
)

// The demo (scripts/demo.sh, `make demo`) is one point of the matrix:
// the demo image, one link, one containerd version, one cold run of the
// full pull and one of the lazy start, each on a new node, printed as a
// small table. It reuses the bench's image cache, registry, throttle
// proxy, nodes and measurements; only the image and the output are its own.

// demoVersion is part of the demo image's cache key: bump it when the app
// layer changes.
const demoVersion = "d1"

// demoSeed seeds the pseudo-random assets: the same bytes on every machine.
var demoSeed = [32]byte{'s', 'l', 'u', 'i', 'c', 'e', '-', 'd', 'e', 'm', 'o'}

// demoAssetFile is the size of each asset file; the last may be smaller.
const demoAssetFile = 32 << 20

// demoApp is the demo container's program: it imports what a small web
// service imports, prints the ready line and waits. It never opens
// /app/assets.
const demoApp = `import json, http.server, urllib.request, email.parser, logging
print("` + ReadyLine + `", flush=True)
import time
time.sleep(600)
`

// DemoRecipe is the demo image: the python3 image (debootstrap minbase with
// python3) plus a layer holding the app (/app/app.py) and dataMiB MiB of
// assets it never reads (/app/assets/*.bin: deterministic pseudo-random
// bytes, incompressible, generated here). Its cache key is the python3
// image's, the asset size and demoVersion.
func DemoRecipe(dataMiB int) Recipe {
	py, _ := recipeByName("python3")
	name := fmt.Sprintf("python3-app-%dm", dataMiB)
	return Recipe{
		Name: name,
		About: fmt.Sprintf("python3 (debootstrap --variant=minbase --include=python3 %s) plus an app layer: "+
			"/app/app.py and %d MiB of assets it never reads (pseudo-random, incompressible)", debianSuite, dataMiB),
		Command: []string{"python3", "/app/app.py"},
		tools:   py.tools,
		key: func(ctx context.Context, b *builder) (string, error) {
			if py.key == nil {
				return "", fmt.Errorf("demo image: no python3 recipe to build on")
			}
			k, err := py.key(ctx, b)
			if err != nil {
				return "", err
			}
			return demoVersion + "-" + k, nil
		},
		build: func(ctx context.Context, b *builder) (v1.Image, error) {
			base, _, err := b.image(ctx, py)
			if err != nil {
				return nil, err
			}
			// Demo removes it once the image is cached.
			path := demoAssetsPath(b, name)
			if err := writeAppLayer(ctx, path, int64(dataMiB)<<20); err != nil {
				return nil, err
			}
			layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
			if err != nil {
				return nil, err
			}
			img, err := mutate.AppendLayers(base, layer)
			if err != nil {
				return nil, err
			}
			return mutate.Config(img, v1.Config{
				Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
				WorkingDir: "/app",
				Cmd:        []string{"python3", "/app/app.py"},
			})
		},
	}
}

// demoAssetsPath is where the demo image's app layer is written before
// the image is cached.
func demoAssetsPath(b *builder, name string) string {
	return filepath.Join(b.cacheDir, name+".assets.tar.gz")
}

// writeAppLayer writes the app layer as a gzipped tar at path: /app,
// /app/app.py and size bytes of assets in files of demoAssetFile bytes.
// The same size gives the same bytes.
func writeAppLayer(ctx context.Context, path string, size int64) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	// BestSpeed: the assets do not compress at any level.
	gz, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(gz)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: fixedTime, Format: tar.FormatPAX})
	}
	file := func(name string, n int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: n, ModTime: fixedTime, Format: tar.FormatPAX})
	}
	if err := dir("app/"); err != nil {
		return err
	}
	if err := file("app/app.py", int64(len(demoApp))); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, demoApp); err != nil {
		return err
	}
	if err := dir("app/assets/"); err != nil {
		return err
	}
	log := zerolog.Ctx(ctx)
	rng := rand.NewChaCha8(demoSeed)
	buf := make([]byte, 1<<20)
	var done int64
	for i := 0; done < size; i++ {
		n := min(int64(demoAssetFile), size-done)
		if err := file(fmt.Sprintf("app/assets/blob-%03d.bin", i), n); err != nil {
			return err
		}
		for left := n; left > 0; {
			if err := ctx.Err(); err != nil {
				return err
			}
			chunk := buf[:min(int64(len(buf)), left)]
			rng.Read(chunk)
			if _, err := tw.Write(chunk); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			left -= int64(len(chunk))
		}
		done += n
		log.Info().Str("progress", fmt.Sprintf("%d of %d MiB", done>>20, size>>20)).Msg("generating the app's assets")
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// DemoConfig says what the demo runs and where.
type DemoConfig struct {
	// DataMiB is the size of the assets the app never reads.
	DataMiB    int
	Link       Link
	Containerd testenv.ContainerdVersion
	// Binaries, WorkDir, CacheDir, RepoRoot and DropCaches are as in
	// Config.
	Binaries   Binaries
	WorkDir    string
	CacheDir   string
	RepoRoot   string
	DropCaches bool
}

// DemoResult is what the demo measured.
type DemoResult struct {
	Image      ImageInfo
	Link       Link
	Containerd string
	DropCaches bool
	Full, Lazy Sample
}

// Demo builds (or takes from the cache) the demo image, pushes it to a
// new local registry, converts it with sluice convert, and starts it once
// with a full pull and once lazily, each on a new node, through the
// throttle proxy at cfg.Link. It logs progress through the long steps.
func Demo(ctx context.Context, cfg DemoConfig) (*DemoResult, error) {
	if cfg.DataMiB < 1 {
		return nil, fmt.Errorf("demo: data = %d MiB, want at least 1", cfg.DataMiB)
	}
	log := zerolog.Ctx(ctx)
	// The matrix config is only checked and used for its paths and
	// defaults: the demo image is not a recipe of Recipes, it builds on
	// python3's.
	b := &bench{cfg: Config{
		Images: []string{"python3"}, Modes: []Mode{Full, Lazy}, States: []NodeState{Fresh},
		Containerds: []testenv.ContainerdVersion{cfg.Containerd}, Links: []Link{cfg.Link}, Runs: 1,
		Binaries: cfg.Binaries, WorkDir: cfg.WorkDir, CacheDir: cfg.CacheDir, RepoRoot: cfg.RepoRoot,
		DropCaches: cfg.DropCaches,
	}, sandbox: filepath.Join(cfg.WorkDir, "sandbox.tar")}
	if err := b.cfg.check(); err != nil {
		return nil, err
	}
	if err := writeSandbox(b.sandbox); err != nil {
		return nil, err
	}
	defer os.Remove(b.sandbox)

	r := DemoRecipe(cfg.DataMiB)
	bl := &builder{cacheDir: filepath.Join(cfg.CacheDir, "startup"), repoRoot: cfg.RepoRoot, baseDir: cfg.CacheDir}
	img, cache, err := bl.image(ctx, r)
	os.Remove(demoAssetsPath(bl, r.Name))
	if err != nil {
		return nil, err
	}
	log.Info().Str("image", r.Name).Str("cache", cache).Msg("demo image ready")

	reg, err := testenv.StartRegistry(filepath.Join(cfg.WorkDir, "registry"))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	defer func() {
		reg.Stop()
		os.RemoveAll(filepath.Join(cfg.WorkDir, "registry"))
	}()
	log.Info().Str("registry", reg.Addr).Msg("pushing the image to a local docker-registry, then sluice convert (a minute or so)")
	start := time.Now()
	im := &benchImage{recipe: r}
	if im.plain, err = b.push(ctx, reg.Addr, "demo/"+r.Name+":v1", img); err != nil {
		return nil, err
	}
	im.Info = ImageInfo{Name: r.Name, About: r.About, Command: r.Command, Cache: cache,
		Layers: len(im.plain.layers), LayerBytes: im.plain.size, Digest: im.plain.digest, Artifact: im.plain.artifact}
	log.Info().Str("image", reg.Addr+"/"+im.plain.repo).Str("artifact", im.Info.Artifact).
		Str("layers", mib(im.Info.LayerBytes)).Dur("took", time.Since(start).Round(time.Second)).Msg("pushed and converted")

	th, err := startThrottle(ctx, cfg.Binaries.ThrottleProxy, filepath.Join(cfg.WorkDir, "proxy"), reg.Addr, cfg.Link)
	if err != nil {
		return nil, err
	}
	defer func() {
		th.stop()
		os.RemoveAll(filepath.Join(cfg.WorkDir, "proxy"))
	}()
	res := &DemoResult{Image: im.Info, Link: cfg.Link, Containerd: cfg.Containerd.String(), DropCaches: cfg.DropCaches}
	for _, m := range []struct {
		mode Mode
		out  *Sample
		what string
	}{
		{Full, &res.Full, "full pull: containerd's overlayfs, every layer downloaded and unpacked before start"},
		{Lazy, &res.Lazy, "lazy: sluiced streams the converted image, block by block, as the container reads it"},
	} {
		log.Info().Str("link", cfg.Link.String()).Str("proxy", th.addr).Msg(m.what)
		stop := watchLink(ctx, th)
		*m.out = b.sample(ctx, point{im, m.mode, Fresh, cfg.Containerd, th, 1})
		stop()
		if m.out.Err != "" {
			return res, fmt.Errorf("demo: %s run: %s", m.mode, m.out.Err)
		}
	}
	return res, nil
}

// watchLink logs what went through the link every few seconds until the
// returned func is called: the progress of a pull.
func watchLink(ctx context.Context, th *throttle) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		log := zerolog.Ctx(ctx)
		first, err := th.stats(ctx)
		if err != nil {
			return
		}
		t0 := time.Now()
		var last traffic
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s, err := th.stats(ctx)
			if err != nil {
				return
			}
			tr := s.since(first, nil)
			if tr == last {
				continue
			}
			last = tr
			log.Info().Str("fetched", mib(tr.Bytes)).Int64("requests", tr.Requests).
				Str("elapsed", time.Since(t0).Round(time.Second).String()).Msg("through the link so far")
		}
	}()
	return func() { cancel(); <-done }
}

// Table writes the demo's result: time to the ready line and what went
// through the link, for the full pull and the lazy start, and the speedup.
func (r *DemoResult) Table(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n== sluice demo: time to the app's first output line, full pull vs lazy ==\n")
	p("image:      %s\n", r.Image.About)
	p("            %d layers, %s compressed, as a full pull downloads them\n", r.Image.Layers, mib(r.Image.LayerBytes))
	p("link:       %s (bench/fio/throttleproxy in front of a local docker-registry)\n", r.Link)
	caches := "page cache dropped before each"
	if !r.DropCaches {
		caches = "page cache NOT dropped"
	}
	p("node:       %s through CRI, a new node for each run (empty content store and chunk cache), %s\n\n", r.Containerd, caches)
	p("  %-34s %10s %10s %22s %10s %16s\n", "", "ready", "(pull)", "fetched before ready", "requests", "total fetched")
	row := func(name string, s Sample) {
		total := "unknown"
		if s.Total != nil {
			total = mib(s.Total.Bytes)
		}
		p("  %-34s %10s %10s %22s %10d %16s\n", name, secs(s.Ready), "("+secs(s.Pull)+")", mib(s.BeforeReady.Bytes), s.BeforeReady.Requests, total)
	}
	row("full pull (containerd overlayfs)", r.Full)
	row("lazy (sluiced)", r.Lazy)
	if r.Lazy.Ready > 0 && r.Lazy.BeforeReady.Bytes > 0 {
		p("\n  lazy was ready %.1fx sooner, having fetched %.1fx fewer bytes", float64(r.Full.Ready)/float64(r.Lazy.Ready),
			float64(r.Full.BeforeReady.Bytes)/float64(r.Lazy.BeforeReady.Bytes))
		p(" (%s of it sluiced's background fetch).\n", mib(r.Lazy.AgentBackground))
	}
	if r.Lazy.Total != nil {
		p("  sluiced's background fetch then brought the rest in, %s after ready.\n", secs(r.Lazy.Complete))
	}
	p("  ready: from the CRI PullImage call to the ready line (%q) in the container's log; pull: the PullImage call.\n", ReadyLine)
	_, err := io.WriteString(w, b.String())
	return err
}

// ParseBandwidth parses a link bandwidth in bits per second: a number with
// an optional k, M or G suffix (powers of 1000), such as 100M or 1G, and an
// optional "bit/s" or "bps" after it.
func ParseBandwidth(s string) (int64, error) {
	t := strings.TrimSpace(s)
	for _, suf := range []string{"bit/s", "bps"} {
		t = strings.TrimSuffix(t, suf)
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "k"), strings.HasSuffix(t, "K"):
		mult = 1e3
	case strings.HasSuffix(t, "M"):
		mult = 1e6
	case strings.HasSuffix(t, "G"):
		mult = 1e9
	}
	if mult > 1 {
		t = t[:len(t)-1]
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bandwidth %q: want bits per second, such as 100M or 1G", s)
	}
	bits := int64(f * float64(mult))
	if bits < 8 {
		return 0, fmt.Errorf("bandwidth %q: want at least 8 bit/s", s)
	}
	return bits, nil
}
