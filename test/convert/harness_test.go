package convert

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/internal/treecmp"
	"github.com/sluice-project/sluice/test/testutil"
)

// tmpBase holds every case's directories. It is short because the reference
// tree is extracted with absolute paths, which PATH_MAX bounds.
const tmpBase = "/var/tmp"

// maxReportLines caps the differences printed for one case.
const maxReportLines = 50

// env is one registry shared by the cases of a test.
type env struct {
	registry string // host:port
	repos    atomic.Int64
}

// newEnv fails the test unless it runs as root with working loop devices
// (it mounts the exported ext4 image on one), and starts an in-process
// registry.
func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.Loop)
	return &env{registry: testutil.Registry(t)}
}

// caseDirs are one case's directories: the reference rootfs, the mount
// point and imageconv's work dir, all under one short temp dir.
type caseDirs struct {
	base, ref, mnt, work string
}

func newCaseDirs(t *testing.T) caseDirs {
	t.Helper()
	base, err := os.MkdirTemp(tmpBase, "sc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	d := caseDirs{base: base, ref: base + "/r", mnt: base + "/m", work: base + "/w"}
	for _, p := range []string{d.ref, d.mnt, d.work} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// flattenAndCompare is the whole check for one image made of gzLayers:
// push, convert, export, fsck, mount, extract the reference, compare.
func (e *env) flattenAndCompare(t *testing.T, d caseDirs, gzLayers ...[]byte) {
	t.Helper()
	e.flattenAndMount(t, d, gzLayers...)
	compareWithReference(t, d, gzLayers...)
}

// flattenAndMount pushes an image made of gzLayers, converts and exports
// it, checks the export with e2fsck and mounts it at d.mnt.
func (e *env) flattenAndMount(t *testing.T, d caseDirs, gzLayers ...[]byte) {
	t.Helper()
	flat, err := e.flatten(t, d, gzLayers...)
	if err != nil {
		t.Fatal(err)
	}
	done := step(t, "e2fsck")
	fsck(t, flat)
	done()
	mount(t, flat, d.mnt)
}

// flatten pushes an image made of gzLayers, converts it and exports the
// flattened image, whose path it returns.
func (e *env) flatten(t *testing.T, d caseDirs, gzLayers ...[]byte) (string, error) {
	t.Helper()
	done := step(t, "push")
	image := e.push(t, gzLayers...)
	done()
	ctx := t.Context()
	opts := []imageconv.Option{imageconv.WithPlainHTTP(), imageconv.WithWorkDir(d.work)}
	done = step(t, "convert")
	results, err := imageconv.Convert(ctx, image, opts...)
	if err != nil {
		return "", fmt.Errorf("Convert(%s): %w", image, err)
	}
	if len(results) != 1 {
		return "", fmt.Errorf("Convert(%s) gave %d results, want 1: %+v", image, len(results), results)
	}
	done()
	flat := filepath.Join(d.base, "flat.ext4")
	done = step(t, "export")
	if err := imageconv.Export(ctx, image, flat, opts...); err != nil {
		return "", fmt.Errorf("Export(%s): %w", image, err)
	}
	done()
	logDiskUse(t, flat)
	return flat, nil
}

// compareWithReference extracts gzLayers with containerd's applier into
// d.ref and fails the test on any difference from the tree at d.mnt.
func compareWithReference(t *testing.T, d caseDirs, gzLayers ...[]byte) {
	t.Helper()
	done := step(t, "reference extraction")
	if err := applyReference(t.Context(), d.ref, gzLayers); err != nil {
		t.Fatal(err)
	}
	done()
	done = step(t, "compare")
	diffs, err := treecmp.Compare(d.ref, d.mnt)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if len(diffs) > 0 {
		t.Errorf("flattened image differs from containerd's extraction (want = containerd, got = ext4) in %d ways:\n%s",
			len(diffs), treecmp.Format(diffs, maxReportLines))
	}
}

// step logs how long a step of a case took, when its returned func is
// called; slow cases say where their time goes.
func step(t *testing.T, name string) func() {
	start := time.Now()
	return func() {
		if d := time.Since(start); d > time.Second {
			t.Logf("%s took %v", name, d.Round(time.Millisecond))
		}
	}
}

// logDiskUse logs a file's size and the disk space it takes.
func logDiskUse(t *testing.T, p string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes, %d allocated", filepath.Base(p), st.Size, st.Blocks*512)
}

// push uploads an image made of gzLayers to a new repository.
func (e *env) push(t *testing.T, gzLayers ...[]byte) string {
	t.Helper()
	img, err := imagebuild.Image(gzLayers...)
	if err != nil {
		t.Fatal(err)
	}
	image := fmt.Sprintf("%s/case%d:latest", e.registry, e.repos.Add(1))
	ref, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", image, err)
	}
	return image
}

// applyReference extracts the layers in order into root with containerd's
// applier, the behaviour the flattened image must reproduce.
func applyReference(ctx context.Context, root string, gzLayers [][]byte) error {
	for i, gz := range gzLayers {
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			return fmt.Errorf("reference layer %d: %w", i, err)
		}
		if _, err := archive.Apply(ctx, root, zr); err != nil {
			return fmt.Errorf("reference extraction of layer %d: %w", i, err)
		}
	}
	return nil
}

// layers finishes builder layers into gzip blobs.
func layers(t *testing.T, ls ...*imagebuild.Layer) [][]byte {
	t.Helper()
	out := make([][]byte, len(ls))
	for i, l := range ls {
		gz, err := l.Gzip()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		out[i] = gz
	}
	return out
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
