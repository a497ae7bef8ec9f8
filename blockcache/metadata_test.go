package blockcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
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
