package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testenv"
)

// ReadyLine is what every benchmark container prints once it is ready.
const ReadyLine = "sluice-bench-ready"

// Recipe is an image the benchmark can build and start.
type Recipe struct {
	Name string
	// About says what is in it, for the report.
	About string
	// Command is the container's command: it prints ReadyLine when the
	// app is ready, then waits (bounded, in case a run leaks it).
	Command []string
	// tools are the commands building it needs.
	tools []string
	// key returns the cache key of the image (its inputs and the
	// recipe's version); build makes it.
	key   func(ctx context.Context, b *builder) (string, error)
	build func(ctx context.Context, b *builder) (v1.Image, error)
	// DefaultLinks are the links a default run (-links default) measures
	// this image on; nil means DefaultLinks. A large image is measured on
	// the link of its issue 15 target only, so that the default run stays
	// within an hour or so.
	DefaultLinks []string
}

// Recipes are the images of issue 15, smallest first. DefaultLinks names
// the links a default run measures each on (nil: DefaultLinks).
var Recipes = []Recipe{
	{
		Name:    "busybox",
		About:   "Debian's busybox-static, one applet link each, /etc/passwd and group; one layer",
		Command: []string{"/bin/sh", "-c", "echo " + ReadyLine + " && exec sleep 600"},
		key:     busyboxKey,
		build:   buildBusybox,
	},
	{
		Name:  "python3",
		About: "debootstrap --variant=minbase --include=python3 bookworm (Debian's mirror); one layer",
		// An app that imports a few standard modules before it serves.
		Command: []string{"python3", "-c", "import json, http.server, urllib.request, email.parser, logging; " +
			"print('" + ReadyLine + "', flush=True); import time; time.sleep(600)"},
		tools: debootstrapTools,
		key:   debootstrapKey("python3"),
		build: buildDebootstrap("python3"),
	},
	{
		Name:  "numpy",
		About: "debootstrap --variant=minbase --include=python3,python3-numpy,python3-scipy bookworm; one layer; ready once `import numpy, scipy` ran",
		Command: []string{"python3", "-c", "import numpy, scipy; " +
			"print('" + ReadyLine + "', flush=True); import time; time.sleep(600)"},
		tools: debootstrapTools,
		key:   debootstrapKey(numpyPackages),
		build: buildDebootstrap(numpyPackages),
		// The target: at least 5x sooner at 100 Mbit/s.
		DefaultLinks: []string{"100M-20ms"},
	},
	{
		Name: "data",
		About: fmt.Sprintf("busybox (one layer) plus %d files of %d MiB of pseudo-random bytes the app never reads and one of %d MB it reads (md5sum); two layers",
			dataFillFiles, dataFillBytes>>20, dataReadBytes/1_000_000),
		Command: dataCommand,
		key:     dataKey,
		build:   buildData,
		// The target: at least 10x sooner at 1 Gbit/s, 20 ms RTT.
		DefaultLinks: []string{"1G-20ms"},
	},
	{
		Name:         "nodejs",
		About:        "debootstrap --variant=minbase --include=nodejs bookworm; one layer; a Node.js app that loads http and crypto before it serves",
		Command:      []string{"node", "-e", "require('http'); require('crypto'); console.log('" + ReadyLine + "'); setTimeout(() => {}, 600000)"},
		tools:        debootstrapTools,
		key:          debootstrapKey("nodejs"),
		build:        buildDebootstrap("nodejs"),
		DefaultLinks: []string{"100M-20ms"},
	},
}

// numpyPackages are the numpy image's packages.
const numpyPackages = "python3,python3-numpy,python3-scipy"

var debootstrapTools = []string{"debootstrap", "tar", "sha256sum"}

// RecipeNames are the names of Recipes.
func RecipeNames() []string {
	var n []string
	for _, r := range Recipes {
		n = append(n, r.Name)
	}
	return n
}

func recipeByName(name string) (Recipe, bool) {
	for _, r := range Recipes {
		if r.Name == name {
			return r, true
		}
	}
	return Recipe{}, false
}

// recipeVersion is part of every cache key: bump it when a recipe changes.
const recipeVersion = "r1"

// debianSuite is the release the debootstrap images are made of.
const debianSuite = "bookworm"

// builder builds and caches images.
type builder struct {
	cacheDir string // CacheDir/startup holds the OCI layouts
	repoRoot string
	baseDir  string // Config.CacheDir: the debootstrap bases (scripts/lib.sh)
}

// image returns r's image from the cache, building and caching it first if
// needed.
func (b *builder) image(ctx context.Context, r Recipe) (v1.Image, string, error) {
	key, err := r.key(ctx, b)
	if err != nil {
		return nil, "", fmt.Errorf("image %s: %w", r.Name, err)
	}
	dir := filepath.Join(b.cacheDir, r.Name+"-"+key)
	if img, err := loadLayout(dir); err == nil {
		return img, dir, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("image %s: cached layout %s: %w", r.Name, dir, err)
	}
	log := zerolog.Ctx(ctx)
	log.Info().Str("image", r.Name).Str("cache", dir).Msg("building the image (once; cached)")
	start := time.Now()
	img, err := r.build(ctx, b)
	if err != nil {
		return nil, "", fmt.Errorf("image %s: %w", r.Name, err)
	}
	if err := saveLayout(dir, img); err != nil {
		return nil, "", fmt.Errorf("image %s: caching in %s: %w", r.Name, dir, err)
	}
	if err := os.RemoveAll(b.scratchDir()); err != nil {
		return nil, "", err
	}
	log.Info().Str("image", r.Name).Dur("took", time.Since(start)).Msg("image built")
	img, err = loadLayout(dir)
	return img, dir, err
}

// scratchDir is where a build writes large intermediate files; it is
// removed once the image is in the cache.
func (b *builder) scratchDir() string { return filepath.Join(b.cacheDir, "scratch") }

// loadLayout reads the one image of the OCI layout at dir.
func loadLayout(dir string) (v1.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		return nil, err
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("%d manifests in the layout, want 1", len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}

// saveLayout writes img as the one image of an OCI layout at dir, whole or
// not at all.
func saveLayout(dir string, img v1.Image) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// newImage is a linux image of this machine's architecture with these
// layers and config, PATH and the working directory set unless c sets them.
func newImage(c v1.Config, layers ...v1.Layer) (v1.Image, error) {
	if c.Env == nil {
		c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if c.WorkingDir == "" {
		c.WorkingDir = "/"
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS:           "linux",
		Architecture: runtime.GOARCH,
		RootFS:       v1.RootFS{Type: "layers"},
		Config:       c,
	})
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return mutate.AppendLayers(img, layers...)
}

const busyboxPath = "/bin/busybox"

func busyboxKey(context.Context, *builder) (string, error) {
	b, err := os.ReadFile(busyboxPath)
	if err != nil {
		return "", fmt.Errorf("busybox-static (scripts/install-deps.sh installs it): %w", err)
	}
	sum := sha256.Sum256(b)
	return recipeVersion + "-" + hex.EncodeToString(sum[:6]), nil
}

var fixedTime = time.Unix(1_700_000_000, 0)

func meta(mode int64) testenv.Meta { return testenv.Meta{Mode: mode, ModTime: fixedTime} }

// busyboxLayer writes a root filesystem of Debian's static busybox, a link
// for each of its applets, and the directories runtimes mount over.
func busyboxLayer(l *testenv.Layer) error {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("busybox-static (scripts/install-deps.sh installs it): %w", err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "run"} {
		l.Dir(d, meta(0o755))
	}
	l.Dir("tmp", meta(0o1777))
	l.File("bin/busybox", bb, meta(0o755))
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			l.Symlink("bin/"+applet, "busybox", meta(0o777))
		}
	}
	l.File("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), meta(0o644))
	l.File("etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), meta(0o644))
	return nil
}

func buildBusybox(context.Context, *builder) (v1.Image, error) {
	l := testenv.NewImageBuilder().Layer()
	if err := busyboxLayer(l); err != nil {
		return nil, err
	}
	return imageOfLayer(l, v1.Config{Cmd: []string{"/bin/sh"}})
}

// imageOfLayer is a one-layer image of l with config c (see newImage).
func imageOfLayer(l *testenv.Layer, c v1.Config) (v1.Image, error) {
	gz, err := l.Gzip()
	if err != nil {
		return nil, err
	}
	img, err := testenv.ImageOf(gz)
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	return newImage(c, layers...)
}

// debootstrapKey: the base's cache dir name (scripts/lib.sh keys it by
// suite, packages and its recipe's version) and this recipe's version.
func debootstrapKey(include string) func(context.Context, *builder) (string, error) {
	return func(ctx context.Context, b *builder) (string, error) {
		dir, err := b.libsh(ctx, `bench_base_dir "$CACHE" "$SUITE" "$INCLUDE"`, include)
		if err != nil {
			return "", err
		}
		return recipeVersion + "-" + filepath.Base(dir), nil
	}
}

// buildDebootstrap makes a one-layer image of the debootstrap base with
// these packages (bench_rootfs_tar in scripts/lib.sh builds and caches it,
// as bench/convert does).
func buildDebootstrap(include string) func(context.Context, *builder) (v1.Image, error) {
	return func(ctx context.Context, b *builder) (v1.Image, error) {
		dir, err := b.libsh(ctx, `d="$(bench_base_dir "$CACHE" "$SUITE" "$INCLUDE")" && bench_rootfs_tar "$d" "$SUITE" "$INCLUDE" >&2 && echo "$d"`, include)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromFile(filepath.Join(dir, "base-rootfs.tar"), tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		return newImage(v1.Config{Cmd: []string{"/bin/bash"}}, layer)
	}
}

// libsh runs script in bash after sourcing scripts/lib.sh, with CACHE,
// SUITE and INCLUDE set, and returns the last line it prints; what it
// logs (to stderr) goes to the logger.
func (b *builder) libsh(ctx context.Context, script, include string) (string, error) {
	lib := filepath.Join(b.repoRoot, "scripts", "lib.sh")
	cmd := exec.CommandContext(ctx, "bash", "-c", `set -euo pipefail; source "$LIB"; `+script)
	cmd.Env = append(os.Environ(), "LIB="+lib, "CACHE="+b.baseDir, "SUITE="+debianSuite, "INCLUDE="+include)
	cmd.Stderr = infoWriter{zerolog.Ctx(ctx).With().Str("from", "scripts/lib.sh").Logger()}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/lib.sh: %s: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if last == "" {
		return "", fmt.Errorf("scripts/lib.sh: %s printed nothing", script)
	}
	return last, nil
}

// withTopLayer is img plus a small layer of its own (/app/NAME.txt): the
// images of the SharedBase node state share img as their base.
func withTopLayer(img v1.Image, name string) (v1.Image, error) {
	l := testenv.NewImageBuilder().Layer()
	l.Dir("app", meta(0o755))
	l.File("app/"+name+".txt", []byte("sluice bench: the "+name+" image's own layer\n"), meta(0o644))
	gz, err := l.Gzip()
	if err != nil {
		return nil, err
	}
	top, err := testenv.ImageOf(gz)
	if err != nil {
		return nil, err
	}
	layers, err := top.Layers()
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layers...)
}

// infoWriter logs each write (a line of a command's stderr) at info level.
type infoWriter struct{ log zerolog.Logger }

func (w infoWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			w.log.Info().Msg(line)
		}
	}
	return len(p), nil
}
