package snapshot

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/sluice-project/sluice/test/testutil"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// testImage is an image as containerd sees it (layers, chain IDs) plus, for
// a converted one, its flattened ext4 image.
type testImage struct {
	ref, manifest string
	layers        []string // digests, bottom first
	chain         []string // chain IDs
	expected      map[string]string
	ext4          string // "" when not converted
}

// applyBlob applies a layer blob to dir the way containerd does.
func applyBlob(ctx context.Context, dir string, blob []byte, opts ...archive.ApplyOpt) error {
	gz, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		return err
	}
	_, err = archive.Apply(ctx, dir, gz, opts...)
	return err
}

// newTestImage builds an image from layer blobs; converted images get a
// flattened ext4 image made from the applied layers.
func newTestImage(t *testing.T, ref string, blobs [][]byte, converted bool) *testImage {
	t.Helper()
	img := &testImage{ref: ref}
	var chain string
	for _, b := range blobs {
		d := digest.FromBytes(b).String()
		img.layers = append(img.layers, d)
		if chain == "" {
			chain = d
		} else {
			chain = digest.FromString(chain + " " + d).String()
		}
		img.chain = append(img.chain, chain)
	}
	img.manifest = digest.FromString(ref + strings.Join(img.layers, ",")).String()
	root := filepath.Join(tempDir(t), "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range blobs {
		if err := applyBlob(context.Background(), root, b); err != nil {
			t.Fatal(err)
		}
	}
	img.expected = treeOf(t, root)
	if converted {
		img.ext4 = filepath.Join(filepath.Dir(root), "image.ext4")
		if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-d", root, img.ext4, "16M").CombinedOutput(); err != nil {
			t.Fatalf("mke2fs: %v: %s", err, out)
		}
	}
	return img
}

// upTo is the image made of the first n layers (an intermediate snapshot).
func (img *testImage) upTo(t *testing.T, blobs [][]byte, n int) map[string]string {
	return newTestImage(t, img.ref+"-partial", blobs[:n], false).expected
}

// treeOf maps the files under dir (not ext4's lost+found) to their
// content, directories to "/".
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		switch {
		case rel == ".":
		case rel == "lost+found":
			return filepath.SkipDir
		case d.IsDir():
			tree[rel+"/"] = "/"
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			tree[rel] = string(b)
		default:
			tree[rel] = "type " + d.Type().String()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func diffTrees(got, want map[string]string) []string {
	var diffs []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			diffs = append(diffs, "missing "+k)
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%s = %q, want %q", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, "unexpected "+k)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// fakeSource serves converted test images with nbdkit, and every layer
// blob for materialization.
type fakeSource struct {
	t       *testing.T
	mu      sync.Mutex
	images  map[string]*fakeImage // by manifest digest
	blobs   map[string][]byte     // by layer digest
	fetched []string
	open    int
}

type fakeImage struct {
	key string
	k   *nbdkit
	err error
}

func newFakeSource(t *testing.T) *fakeSource {
	return &fakeSource{t: t, images: map[string]*fakeImage{}, blobs: map[string][]byte{}}
}

// add registers img's blobs and, if converted, serves its ext4 image.
func (f *fakeSource) add(img *testImage, blobs [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, b := range blobs {
		f.blobs[img.layers[i]] = b
	}
	if img.ext4 != "" {
		sum := sha256.Sum256([]byte(img.manifest))
		f.images[img.manifest] = &fakeImage{key: "sha256:" + hex.EncodeToString(sum[:]), k: startNbdkit(f.t, img.ext4)}
	}
}

func (f *fakeSource) Resolve(ctx context.Context, img ImageRef) (Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	im, ok := f.images[img.ManifestDigest]
	if !ok {
		return nil, NotStreamable("no artifact", nil)
	}
	if im.err != nil {
		return nil, im.err
	}
	f.open++
	return &fakeStream{f: f, key: im.key, exp: im.k.export}, nil
}

func (f *fakeSource) FetchLayer(ctx context.Context, img ImageRef, layer string) (io.ReadCloser, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[layer]
	if !ok {
		return nil, fmt.Errorf("layer %s: %w", layer, errdefs.ErrNotFound)
	}
	f.fetched = append(f.fetched, layer)
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (f *fakeSource) openStreams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open
}

func (f *fakeSource) fetches() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.fetched...)
}

type fakeStream struct {
	f      *fakeSource
	key    string
	exp    Export
	closed bool
}

func (s *fakeStream) Key() string    { return s.key }
func (s *fakeStream) Export() Export { return s.exp }
func (s *fakeStream) String() string { return s.key }
func (s *fakeStream) Close() error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if !s.closed {
		s.closed = true
		s.f.open--
	}
	return nil
}

// unpack unpacks img, made of blobs, through sn as containerd's CRI
// unpacker does.
func unpack(t *testing.T, ctx context.Context, sn snapshots.Snapshotter, img *testImage, blobs [][]byte) error {
	t.Helper()
	_, err := testutil.Unpack(ctx, sn, testutil.UnpackImage{Ref: img.ref, Manifest: img.manifest, Layers: img.layers, Chain: img.chain, Blobs: blobs})
	return err
}

// rootfsOf mounts a snapshot's mounts and returns its tree; write, if not
// nil, runs while it is mounted.
func rootfsOf(t *testing.T, ctx context.Context, mounts []mount.Mount, write func(root string)) map[string]string {
	t.Helper()
	target, unmount := testutil.MountRootfs(t, tempDir(t), mounts)
	defer unmount()
	tree := treeOf(t, target)
	if write != nil {
		write(target)
	}
	return tree
}

// snapshotRoot is a snapshotter root that is cleaned up even when a test
// fails half-way: mounts, loop devices and processes under it go.
func snapshotRoot(t *testing.T) string {
	root := tempDir(t)
	t.Cleanup(func() { leakcheck.Sweep(root) })
	return root
}
