package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testutil"
)

// The layers of the test images: a base, a middle layer shared by A and B
// (replacing, deleting and hiding base files), and a top layer each.
var (
	baseLayer = testutil.LayerSpec{
		"etc/os-release":    "base\n",
		"bin/sh":            "sh\n",
		"usr/share/doc/a":   "a\n",
		"usr/share/doc/b":   "b\n",
		"var/lib/x/old":     "old\n",
		"var/empty/":        "",
		"root/.profile":     "profile\n",
		"usr/lib/os-layers": "base\n",
	}
	middleLayer = testutil.LayerSpec{
		"etc/os-release":  "middle\n",
		"usr/share/doc/a": testutil.Whiteout,
		"var/lib/x/":      testutil.Opaque,
		"var/lib/x/new":   "new\n",
		"opt/mid":         "mid\n",
	}
	topA = testutil.LayerSpec{"app/a": "A\n", "bin/sh": testutil.Whiteout}
	topB = testutil.LayerSpec{"app/b": "B\n", "opt/mid": "B replaced mid\n"}
)

type fixture struct {
	ctx    context.Context
	root   string
	src    *fakeSource
	sn     *Snapshotter
	blobsA [][]byte
	blobsB [][]byte
	a, b   *testImage // A converted, B not
}

func newFixture(t *testing.T, opts ...Opt) *fixture {
	t.Helper()
	testutil.RequirePortable(t, "mke2fs")
	f := &fixture{ctx: testContext(t), root: snapshotRoot(t), src: newFakeSource(t)}
	base, mid := testutil.LayerBlob(t, baseLayer), testutil.LayerBlob(t, middleLayer)
	f.blobsA = [][]byte{base, mid, testutil.LayerBlob(t, topA)}
	f.blobsB = [][]byte{base, mid, testutil.LayerBlob(t, topB)}
	f.a = newTestImage(t, "registry.test/a:1", f.blobsA, true)
	f.b = newTestImage(t, "registry.test/b:1", f.blobsB, false)
	f.src.add(f.a, f.blobsA)
	f.src.add(f.b, f.blobsB)
	f.sn = f.open(t, f.src, opts...)
	return f
}

func (f *fixture) open(t *testing.T, src Source, opts ...Opt) *Snapshotter {
	t.Helper()
	sn, err := New(f.ctx, f.root, src, NewPortableAttacher(filepath.Join(f.root, "devices")), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// removeAll removes every snapshot, children first, as containerd's
// garbage collector does, and closes the snapshotter.
func (f *fixture) removeAll(t *testing.T) {
	t.Helper()
	testutil.RemoveAll(t, f.ctx, f.sn)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}
	if n := f.src.openStreams(); n != 0 {
		t.Errorf("%d streams left open", n)
	}
	assertNoLeaks(t, f.root)
	if entries, _ := os.ReadDir(filepath.Join(f.root, "images")); len(entries) != 0 {
		t.Errorf("image directories left: %v", entries)
	}
}

func (f *fixture) imageMount(img *testImage) string {
	st, _ := f.src.Resolve(f.ctx, ImageRef{Ref: img.ref, ManifestDigest: img.manifest})
	defer st.Close()
	return filepath.Join(f.sn.imageDir(st.Key()), "mnt")
}

// runContainer unpacks image A, prepares the snapshot "container" on it and
// mounts that at the returned rootfs until the test ends, as a running
// container would.
func (f *fixture) runContainer(t *testing.T) string {
	t.Helper()
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	mounts, err := f.sn.Prepare(f.ctx, "container", f.a.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	target, unmount := testutil.MountRootfs(t, tempDir(t), mounts)
	t.Cleanup(unmount)
	return target
}

func checkTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if diffs := diffTrees(got, want); len(diffs) > 0 {
		t.Errorf("%s differs from the image:\n  %s", what, strings.Join(diffs, "\n  "))
	}
}

func TestRemoteStreamedImage(t *testing.T) {
	f := newFixture(t)
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	if got := f.src.fetches(); len(got) != 0 {
		t.Errorf("layers fetched for a streamed image: %v", got)
	}
	for i, chain := range f.a.chain {
		info, err := f.sn.Stat(f.ctx, chain)
		if err != nil {
			t.Fatal(err)
		}
		want := placeholderLayer
		if i == len(f.a.chain)-1 {
			want = placeholderImage
		}
		if info.Kind != snapshots.KindCommitted || info.Labels[labelPlaceholder] != want {
			t.Errorf("layer %d: kind %v, placeholder label %q, want committed %q", i, info.Kind, info.Labels[labelPlaceholder], want)
		}
	}
	if st := f.sn.Stats(); st.Placeholders != 3 || st.Images != 1 {
		t.Errorf("Stats = %+v, want 3 placeholders, 1 image", st)
	}

	// Two containers on the image: one device, one image mount.
	top := f.a.chain[len(f.a.chain)-1]
	mnt := f.imageMount(f.a)
	var uppers []string
	for _, key := range []string{"container-1", "container-2"} {
		mounts, err := f.sn.Prepare(f.ctx, key, top)
		if err != nil {
			t.Fatal(err)
		}
		if len(mounts) != 1 || mounts[0].Type != "overlay" || !slices.Contains(mounts[0].Options, "lowerdir="+mnt) {
			t.Errorf("%s mounts = %+v, want overlay on lowerdir=%s", key, mounts, mnt)
		}
		tree := rootfsOf(t, f.ctx, mounts, func(root string) {
			if err := os.WriteFile(filepath.Join(root, "written-by-"+key), []byte(key), 0o644); err != nil {
				t.Error(err)
			}
			if err := os.Remove(filepath.Join(root, "etc/os-release")); err != nil {
				t.Error(err)
			}
		})
		checkTree(t, key+" rootfs", tree, f.a.expected)
		uppers = append(uppers, upperDir(t, mounts))
	}
	for i, upper := range uppers {
		if got := readFile(t, filepath.Join(upper, "written-by-container-"+string(rune('1'+i)))); got == "" {
			t.Errorf("container %d's write is not in its upper dir", i+1)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "written-by-container-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a container's write reached the image mount: %v", err)
	}
	if got := readFile(t, filepath.Join(mnt, "etc/os-release")); got != "middle\n" {
		t.Errorf("image's etc/os-release = %q after a container deleted it", got)
	}
	if n := countMounts(t, mnt); n != 1 {
		t.Errorf("image mounted %d times", n)
	}
	if n := len(leaks(t, filepath.Join(f.root, "devices"))); n != 4 { // FUSE mount, loop device, nbdfuse, relay
		t.Errorf("device resources = %v, want one device's FUSE mount, loop, nbdfuse and relay", leaks(t, filepath.Join(f.root, "devices")))
	}

	// Mounts again, and a read-only view.
	again, err := f.sn.Mounts(f.ctx, "container-1")
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, "container-1 after Mounts", rootfsOf(t, f.ctx, again, nil), withWrites(f.a.expected, "container-1"))
	view, err := f.sn.View(f.ctx, "view", top)
	if err != nil {
		t.Fatal(err)
	}
	if len(view) != 1 || view[0].Type != "bind" || view[0].Source != mnt || !slices.Contains(view[0].Options, "ro") {
		t.Errorf("view mounts = %+v, want a read-only bind of %s", view, mnt)
	}
	checkTree(t, "view", rootfsOf(t, f.ctx, view, nil), f.a.expected)

	// Pulling it again changes nothing.
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	f.removeAll(t)
	if st := f.sn.Stats(); st.Images != 0 {
		t.Errorf("Stats after removing everything = %+v", st)
	}
}

// withWrites is the image as container key changed it in
// TestRemoteStreamedImage.
func withWrites(tree map[string]string, key string) map[string]string {
	out := map[string]string{"written-by-" + key: key}
	for k, v := range tree {
		if k != "etc/os-release" {
			out[k] = v
		}
	}
	return out
}

func upperDir(t *testing.T, mounts []mount.Mount) string {
	t.Helper()
	for _, o := range mounts[0].Options {
		if dir, ok := strings.CutPrefix(o, "upperdir="); ok {
			return dir
		}
	}
	t.Fatalf("no upperdir in %+v", mounts)
	return ""
}

// TestRemoteSharedBase: A (converted) and B (not converted) share their
// two lower layers; whichever is pulled first, containers of both, and a
// container on the shared intermediate snapshot, see correct root
// filesystems.
func TestRemoteSharedBase(t *testing.T) {
	for _, order := range []string{"A then B", "B then A"} {
		t.Run(strings.ReplaceAll(order, " ", ""), func(t *testing.T) {
			f := newFixture(t)
			first, second := f.a, f.b
			firstBlobs, secondBlobs := f.blobsA, f.blobsB
			if order == "B then A" {
				first, second, firstBlobs, secondBlobs = second, first, secondBlobs, firstBlobs
			}
			if err := unpack(t, f.ctx, f.sn, first, firstBlobs); err != nil {
				t.Fatal(err)
			}
			if err := unpack(t, f.ctx, f.sn, second, secondBlobs); err != nil {
				t.Fatal(err)
			}
			for _, img := range []*testImage{f.a, f.b} {
				mounts, err := f.sn.Prepare(f.ctx, "container-"+img.ref, img.chain[2])
				if err != nil {
					t.Fatal(err)
				}
				checkTree(t, img.ref+" container", rootfsOf(t, f.ctx, mounts, nil), img.expected)
			}
			// A container on the intermediate snapshot (the shared base).
			mounts, err := f.sn.Prepare(f.ctx, "container-intermediate", f.a.chain[1])
			if err != nil {
				t.Fatal(err)
			}
			checkTree(t, "intermediate container", rootfsOf(t, f.ctx, mounts, nil), f.a.upTo(t, f.blobsA, 2))
			view, err := f.sn.View(f.ctx, "view-intermediate", f.a.chain[1])
			if err != nil {
				t.Fatal(err)
			}
			checkTree(t, "intermediate view", rootfsOf(t, f.ctx, view, nil), f.a.upTo(t, f.blobsA, 2))

			st := f.sn.Stats()
			if order == "A then B" {
				// B's unpack found the shared layers as A's placeholders and
				// had them materialized from A's layer blobs.
				if got := f.src.fetches(); !slices.Equal(got, f.a.layers[:2]) {
					t.Errorf("fetched %v, want A's two lower layers once each", got)
				}
				if st.Materialized != 2 || st.Placeholders != 3 {
					t.Errorf("Stats = %+v, want 3 placeholders, 2 materialized", st)
				}
			} else {
				// A found the shared layers ordinary; only its top layer is a
				// placeholder, and nothing needed materializing.
				if got := f.src.fetches(); len(got) != 0 {
					t.Errorf("fetched %v, want nothing", got)
				}
				if st.Materialized != 0 || st.Placeholders != 1 {
					t.Errorf("Stats = %+v, want 1 placeholder, none materialized", st)
				}
			}
			if st.Fallbacks["no artifact"] != 1 {
				t.Errorf("Fallbacks = %v, want B counted once as no artifact", st.Fallbacks)
			}
			f.removeAll(t)
		})
	}
}

// TestRemoteMaterializeRejectsWrongBlob: a layer blob that does not match
// its digest is never used.
func TestRemoteMaterializeRejectsWrongBlob(t *testing.T) {
	f := newFixture(t)
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	f.src.mu.Lock()
	f.src.blobs[f.a.layers[0]] = testutil.LayerBlob(t, testutil.LayerSpec{"evil": "x"})
	f.src.mu.Unlock()
	_, err := f.sn.Prepare(f.ctx, "container", f.a.chain[1])
	if err == nil || !strings.Contains(err.Error(), "does not match digest") {
		t.Fatalf("Prepare on a placeholder whose layer blob is wrong: %v", err)
	}
	if _, err := f.sn.Stat(f.ctx, "container"); !errdefs.IsNotFound(err) {
		t.Errorf("the failed snapshot is still there: %v", err)
	}
	if st := f.sn.Stats(); st.MaterializeFailures != 1 || st.Materialized != 0 {
		t.Errorf("Stats = %+v", st)
	}
	f.removeAll(t)
}

func TestRemotePolicyRequire(t *testing.T) {
	f := newFixture(t, WithPolicy(PolicyRequire))
	err := unpack(t, f.ctx, f.sn, f.b, f.blobsB)
	if err == nil {
		t.Fatal("pull of an unconverted image succeeded under policy require")
	}
	for _, want := range []string{f.b.ref, "no artifact", `policy "require"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if !errdefs.IsFailedPrecondition(err) || !errors.Is(err, ErrNotStreamable) {
		t.Errorf("error %v: want failed precondition and ErrNotStreamable", err)
	}
	if st := f.sn.Stats(); st.Refused["no artifact"] != 1 {
		t.Errorf("Refused = %v", st.Refused)
	}
	// The converted image streams; containers (no unpack labels) are not
	// affected by the policy.
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	if _, err := f.sn.Prepare(f.ctx, "container", f.a.chain[2]); err != nil {
		t.Fatal(err)
	}
	f.removeAll(t)
}

// TestRemoteAttachFailureFallsBack: an image that resolves but cannot be
// attached is pulled the ordinary way under the fallback policy.
func TestRemoteAttachFailureFallsBack(t *testing.T) {
	f := newFixture(t)
	f.src.mu.Lock()
	f.src.images[f.a.manifest].k.stop()
	f.src.mu.Unlock()
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	mounts, err := f.sn.Prepare(f.ctx, "container", f.a.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, "container", rootfsOf(t, f.ctx, mounts, nil), f.a.expected)
	if st := f.sn.Stats(); st.Fallbacks["mount failed"] != 1 || st.Placeholders != 0 || st.AttachErrors+st.MountErrors != 1 {
		t.Errorf("Stats = %+v, want one fallback for a failed mount, one attach or mount error", st)
	}
	f.removeAll(t)
}

// TestRemoteRestart: the agent goes away with containers running and its
// NBD server; the next one adopts the image mount (no second mount, no
// second device), the containers' reads go on, and removing everything
// leaves nothing.
func TestRemoteRestart(t *testing.T) {
	f := newFixture(t)
	target := f.runContainer(t)
	readFile(t, filepath.Join(target, "app/a"))

	// The agent stops: the snapshotter is closed, the server goes.
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}
	f.src.mu.Lock()
	f.src.images[f.a.manifest].k.stop()
	f.src.mu.Unlock()
	// A leftover device nobody uses, from a crash between attach and mount.
	spare := startNbdkit(t, f.a.ext4)
	if _, err := NewPortableAttacher(filepath.Join(f.root, "devices")).Attach(f.ctx, spare.export); err != nil {
		t.Fatal(err)
	}

	// The new agent serves the image on another socket.
	f.src.mu.Lock()
	f.src.images[f.a.manifest].k = startNbdkit(t, f.a.ext4)
	f.src.mu.Unlock()
	f.sn = f.open(t, f.src)
	mnt := f.imageMount(f.a)
	if n := countMounts(t, mnt); n != 1 {
		t.Errorf("image mounted %d times after restart", n)
	}
	if got := readFile(t, filepath.Join(target, "usr/share/doc/b")); got != "b\n" {
		t.Errorf("container read after restart: %q", got)
	}
	if st := f.sn.Stats(); st.Images != 1 {
		t.Errorf("Stats after restart = %+v, want the image adopted", st)
	}
	if n := len(leaks(t, filepath.Join(f.root, "devices"))); n != 4 {
		t.Errorf("device resources after restart = %v, want one device (the spare detached)", leaks(t, filepath.Join(f.root, "devices")))
	}
	// A new container on the adopted image.
	more, err := f.sn.Prepare(f.ctx, "container-2", f.a.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, "container after restart", rootfsOf(t, f.ctx, more, nil), f.a.expected)
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatal(err)
	}
	f.removeAll(t)
}

func TestUnpackTargetOf(t *testing.T) {
	labels := func(layers string) map[string]string {
		return map[string]string{
			labelTargetRef: "chain", labelImageRef: "r", labelManifestDigest: "m",
			labelLayerDigest: "sha256:b", labelImageLayers: layers,
		}
	}
	for _, tc := range []struct {
		layers string
		top    bool
	}{
		{"sha256:b", true},
		{"sha256:b,sha256:c", false},
		{"", false},                  // unknown: taken as a lower layer
		{"sha256:a", false},          // inconsistent
		{"sha256:b,sha256:b", false}, // the same blob twice: not the top yet
	} {
		tg, ok, missing := unpackTargetOf(labels(tc.layers))
		if !ok || missing != "" || tg.top != tc.top {
			t.Errorf("image-layers %q: top %v ok %v missing %q, want top %v", tc.layers, tg.top, ok, missing, tc.top)
		}
	}
	l := labels("sha256:b")
	delete(l, labelManifestDigest)
	if _, ok, missing := unpackTargetOf(l); !ok || missing != labelManifestDigest {
		t.Errorf("without manifest digest: ok %v missing %q", ok, missing)
	}
	if _, ok, _ := unpackTargetOf(map[string]string{"x": "y"}); ok {
		t.Error("labels without snapshot.ref taken as an unpack")
	}
}

func TestUpdateKeepsPlaceholderLabels(t *testing.T) {
	f := newFixture(t)
	if err := unpack(t, f.ctx, f.sn, f.a, f.blobsA); err != nil {
		t.Fatal(err)
	}
	top := f.a.chain[2]
	if _, err := f.sn.Update(f.ctx, snapshots.Info{Name: top, Labels: map[string]string{"containerd.io/gc.root": "x"}}); err != nil {
		t.Fatal(err)
	}
	info, err := f.sn.Stat(f.ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels[labelPlaceholder] != placeholderImage || info.Labels["containerd.io/gc.root"] != "x" {
		t.Errorf("labels after Update = %v", info.Labels)
	}
	// Nor can a commit forge them.
	if _, err := f.sn.Prepare(f.ctx, "active", ""); err != nil {
		t.Fatal(err)
	}
	if err := f.sn.Commit(f.ctx, "forged", "active", snapshots.WithLabels(map[string]string{labelPlaceholder: placeholderImage})); err != nil {
		t.Fatal(err)
	}
	if info, _ := f.sn.Stat(f.ctx, "forged"); info.Labels[labelPlaceholder] != "" {
		t.Errorf("commit kept a forged placeholder label: %v", info.Labels)
	}
	f.removeAll(t)
}

// TestRemoteRestartDeadDevice: after a restart the image's device no
// longer reads (its nbdfuse died). The image mount is replaced for new
// containers; the old device is detached once its last user is gone.
func TestRemoteRestartDeadDevice(t *testing.T) {
	f := newFixture(t)
	target := f.runContainer(t)
	if err := f.sn.Close(); err != nil {
		t.Fatal(err)
	}
	pids, _ := filepath.Glob(filepath.Join(f.root, "devices", "*", "nbdfuse.pid"))
	if len(pids) != 1 {
		t.Fatalf("pid files: %v", pids)
	}
	if err := unix.Kill(readPID(pids[0]), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}

	f.sn = f.open(t, f.src)
	more, err := f.sn.Prepare(f.ctx, "container-2", f.a.chain[2])
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, "new container after the device died", rootfsOf(t, f.ctx, more, nil), f.a.expected)
	if n := countMounts(t, f.imageMount(f.a)); n != 1 {
		t.Errorf("image mounted %d times", n)
	}
	// The old container goes; Cleanup detaches its device.
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.sn.Cleanup(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(leaks(t, filepath.Join(f.root, "devices"))); n != 4 {
		t.Errorf("device resources after Cleanup = %v, want the new device only", leaks(t, filepath.Join(f.root, "devices")))
	}
	f.removeAll(t)
}

func TestOneSnapshotterPerRoot(t *testing.T) {
	ctx := testContext(t)
	root := tempDir(t)
	sn, err := New(ctx, root, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, root, nil, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second New on %s: %v, want in use", root, err)
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn, err = New(ctx, root, nil, nil)
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	sn.Close()
}
