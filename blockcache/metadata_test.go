package blockcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

// ext4MetadataBlocks lists the blocks of the fixture's ext4 metadata as
// e2fsprogs sees them: dumpe2fs's superblock, group descriptors, bitmaps
// and inode tables, and debugfs's blocks of every directory.
func ext4MetadataBlocks(t *testing.T, image []byte) []int64 {
	t.Helper()
	for _, tool := range []string{"dumpe2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (e2fsprogs, scripts/install-deps.sh) is missing: %v", tool, err)
		}
	}
	file := filepath.Join(t.TempDir(), "image.ext4")
	if err := os.WriteFile(file, image, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dumpe2fs", file).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	var blocks []int64
	re := regexp.MustCompile(`(?:Primary superblock|Group descriptors|Reserved GDT blocks|Block bitmap|Inode bitmap|Inode table) at (\d+)(?:-(\d+))?`)
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		lo, _ := strconv.ParseInt(m[1], 10, 64)
		hi := lo
		if m[2] != "" {
			hi, _ = strconv.ParseInt(m[2], 10, 64)
		}
		for b := lo; b <= hi; b++ {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		t.Fatalf("dumpe2fs listed no metadata:\n%s", out)
	}
	debugfs := func(req string) string {
		out, err := exec.Command("debugfs", "-R", req, file).Output()
		if err != nil {
			t.Fatalf("debugfs -R %q: %v", req, err)
		}
		return string(out)
	}
	dirs := []string{"/"}
	for len(dirs) > 0 {
		dir := dirs[0]
		dirs = dirs[1:]
		for _, f := range strings.Fields(debugfs("blocks " + dir)) {
			b, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatalf("debugfs blocks %s: %q", dir, f)
			}
			blocks = append(blocks, b)
		}
		for _, line := range strings.Split(debugfs("ls -p "+dir), "\n") {
			// /inode/mode/uid/gid/name/size/
			p := strings.Split(line, "/")
			if len(p) > 5 && strings.HasPrefix(p[2], "04") && p[5] != "." && p[5] != ".." {
				dirs = append(dirs, path.Join(dir, p[5]))
			}
		}
	}
	return blocks
}

func TestMetadataFirst(t *testing.T) {
	e := newEnv(t)
	ix := e.art.Index
	meta := map[[32]byte]bool{}
	var want []int
	for _, b := range ext4MetadataBlocks(t, e.f.want) {
		i := int(b * 4096 / ix.ChunkSize)
		if c := ix.Chunks[i]; !c.Zero() && !meta[c.Digest] {
			meta[c.Digest] = true
			want = append(want, i)
		}
	}
	// The background fetch of every chunk is on but waits for an hour of
	// quiet: metadata does not wait for it.
	im := e.open(WithMetadataFirst(true), WithBackgroundRate(1<<30), WithBackgroundQuiet(time.Hour))
	waitFor(t, "the metadata chunks", func() bool {
		for _, i := range want {
			if !e.store.Has(ix.Chunks[i].Digest) {
				return false
			}
		}
		return true
	})
	im.Close()
	var data []int
	for i, c := range ix.Chunks {
		if !c.Zero() && !meta[c.Digest] && e.store.Has(c.Digest) {
			data = append(data, i)
		}
	}
	gets, ranges := e.faults.counts()
	if len(data) > 0 {
		t.Errorf("data chunks %v fetched at Open, beyond the metadata chunks %v", data, want)
	}
	if s := im.Stats(); s.Reads != 0 || s.MetadataChunks < int64(len(want)) || gets > 4 {
		t.Errorf("no read: %d reads, %d metadata chunks (want %d), %d range requests %q (want at most 4)", s.Reads, s.MetadataChunks, len(want), gets, ranges)
	}
	t.Logf("metadata chunks %v of %d: %d range requests %q", want, len(ix.Chunks), gets, ranges)
}

// syncBuffer is a log sink safe for the prefetch goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMetadataUnknownSuperblock(t *testing.T) {
	e := newEnv(t)
	// An image whose first chunk is all zeros: no superblock.
	ix := *e.art.Index
	ix.Chunks = slices.Clone(ix.Chunks)
	ix.Chunks[0].Digest, ix.Chunks[0].Offset, ix.Chunks[0].Length = [32]byte{}, 0, 0
	art := *e.art
	art.Index = &ix
	var logs syncBuffer
	ctx := zerolog.New(&logs).WithContext(context.Background())
	im, err := Open(ctx, &art, e.store, WithBackgroundRate(0))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	waitFor(t, "the log line", func() bool { return strings.Contains(logs.String(), "filesystem metadata not prefetched") })
	if l := logs.String(); !strings.Contains(l, `"level":"warn"`) || !strings.Contains(l, art.Descriptor.Digest.String()) {
		t.Errorf("log does not warn naming the artifact: %s", l)
	}
	if gets, ranges := e.faults.counts(); gets != 0 {
		t.Errorf("%d range requests %q for an image without a superblock", gets, ranges)
	}
	// The image still serves.
	off, n := e.chunkRange(e.f.storedChunk(t, 3))
	e.read(im, off, n)
}

func TestSuperblockCorrupt(t *testing.T) {
	f := getFixture(t)
	size := int64(len(f.want))
	good := f.want[sbOffset : sbOffset+sbSize]
	l, err := superblock(good, size)
	if err != nil {
		t.Fatalf("the fixture's superblock: %v", err)
	}
	if err := l.groups(f.want[l.gdtOff:l.gdtOff+l.gdtLen], size); err != nil || len(l.tables) == 0 {
		t.Fatalf("the fixture's group descriptors: %v, %d groups", err, len(l.tables))
	}
	le := binary.LittleEndian
	for name, mutate := range map[string]func(b []byte){
		"magic":             func(b []byte) { le.PutUint16(b[0x38:], 0x1234) },
		"blocks past end":   func(b []byte) { le.PutUint32(b[0x04:], 1<<31) },
		"block size":        func(b []byte) { le.PutUint32(b[0x18:], 20) },
		"no blocks a group": func(b []byte) { le.PutUint32(b[0x20:], 0) },
		"inode size":        func(b []byte) { le.PutUint16(b[0x58:], 100) },
		"meta_bg":           func(b []byte) { le.PutUint32(b[0x60:], le.Uint32(b[0x60:])|incompatMeta) },
	} {
		b := slices.Clone(good)
		mutate(b)
		if _, err := superblock(b, size); !errors.Is(err, errNoExt4) {
			t.Errorf("%s: %v, want errNoExt4", name, err)
		}
	}
	gdt := slices.Clone(f.want[l.gdtOff : l.gdtOff+l.gdtLen])
	le.PutUint32(gdt[0x8:], uint32(size/4096)) // the inode table past the end
	if err := l.groups(gdt, size); !errors.Is(err, errNoExt4) {
		t.Errorf("an inode table past the end: %v, want errNoExt4", err)
	}
}

// TestMetadataFirstManyDirectories: an image of several block groups and
// hundreds of directories (an interpreter's library tree, in small):
// metadata first fetches every chunk of metadata e2fsprogs lists, the
// directories' included, in a few range requests, and no file data.
func TestMetadataFirstManyDirectories(t *testing.T) {
	ctx := context.Background()
	counter := &faultHandler{next: testutil.NewRegistry()}
	host := testutil.Serve(t, counter)
	files := map[string][]byte{
		// Past one block group (128 MiB): zeros, which cost nothing.
		"big/zeros.bin": make([]byte, 136<<20),
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for d := range 300 {
		for f := range 6 {
			b := make([]byte, 1000+rng.IntN(6000))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			files[fmt.Sprintf("lib/pkg%03d/sub/mod%d.py", d, f)] = b
		}
	}
	layer, err := tarLayer(files)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/meta/app:v1"
	if err := pushImage(ref, layer); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	opts := []imageconv.Option{imageconv.WithPlainHTTP(), imageconv.WithWorkDir(work), imageconv.WithChunkSize(64 << 10)}
	if _, err := imageconv.Convert(ctx, ref, opts...); err != nil {
		t.Fatalf("convert: %v", err)
	}
	art, err := artifact.Lookup(ctx, ref, artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(work, "image.ext4")
	if err := imageconv.Export(ctx, ref, out, opts...); err != nil {
		t.Fatal(err)
	}
	image, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	counter.set(func(h *faultHandler) { h.blobPath = "/v2/meta/app/blobs/" + art.Data.Digest.String() })
	if l, err := superblock(image[sbOffset:sbOffset+sbSize], int64(len(image))); err != nil || l.gdtLen/l.descSize < 2 {
		t.Fatalf("want an image of several block groups: %v, %+v", err, l)
	}
	ix := art.Index
	meta := map[[32]byte]bool{}
	var want []int
	for _, b := range ext4MetadataBlocks(t, image) {
		i := int(b * 4096 / ix.ChunkSize)
		if c := ix.Chunks[i]; !c.Zero() && !meta[c.Digest] {
			meta[c.Digest] = true
			want = append(want, i)
		}
	}
	store := openStore(t, t.TempDir(), 1<<30)
	im, err := Open(ctx, art, store, WithBackgroundRate(0))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the metadata chunks", func() bool {
		for _, i := range want {
			if !store.Has(ix.Chunks[i].Digest) {
				return false
			}
		}
		return true
	})
	im.Close()
	var data []int
	for i, c := range ix.Chunks {
		if !c.Zero() && !meta[c.Digest] && store.Has(c.Digest) {
			data = append(data, i)
		}
	}
	s := im.Stats()
	gets, ranges := counter.counts()
	if len(data) > 0 {
		t.Errorf("data chunks %v fetched at Open, beyond the %d metadata chunks", data, len(want))
	}
	if gets > 8 {
		t.Errorf("%d range requests for %d metadata chunks, want a few: %q", gets, len(want), ranges)
	}
	t.Logf("%d metadata chunks of %d (%d stored): %d range requests %q, %d bytes", len(want), len(ix.Chunks), len(ix.Chunks)-ix.ZeroChunks(), gets, ranges, s.BytesFetched)
}
