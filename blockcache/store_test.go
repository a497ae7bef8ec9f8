package blockcache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

func chunkOf(seed uint64, n int) ([32]byte, []byte) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return sha256.Sum256(b), b
}

// diskUsage walks a store directory: the 4 KiB blocks of chunk files, and
// whether every one hashes to its name.
func diskUsage(t *testing.T, dir string) (used int64, files int) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == lockName {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			t.Errorf("temporary file left: %s", p)
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != d.Name() {
			t.Errorf("%s does not hash to its name", p)
		}
		used += blocks(int64(len(b)))
		files++
		return nil
	})
	return used, files
}

func TestStoreBoundRandomWorkload(t *testing.T) {
	dir := t.TempDir()
	const limit = 40 * blockSize
	s := openStore(t, dir, limit, WithHotBytes(3*blockSize))
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				seed := rng.Uint64N(60)
				d, b := chunkOf(seed, 1+int(seed%3)*blockSize+int(seed%5)*100)
				switch rng.IntN(3) {
				case 0:
					if err := s.Put(ctx, d, b); err != nil && !errors.Is(err, ErrStoreFull) {
						t.Error(err)
					}
				case 1:
					if got, ok := s.Get(ctx, d); ok && sha256.Sum256(got) != d {
						t.Error("Get returned wrong bytes")
					}
				case 2:
					if unpin, ok := s.Pin(d); ok {
						d2, b2 := chunkOf(seed+100, blockSize)
						s.Put(ctx, d2, b2)
						unpin()
					}
				}
				if st := s.Stats(); st.Used > limit {
					t.Errorf("used %d > bound %d", st.Used, limit)
				}
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.HighWater > limit || st.Evictions == 0 {
		t.Errorf("stats: %+v", st)
	}
	used, files := diskUsage(t, dir)
	if used != st.Used || files != st.Chunks || used > limit {
		t.Errorf("on disk %d bytes in %d files, store says %+v", used, files, st)
	}
}

func TestStoreLRU(t *testing.T) {
	s := openStore(t, t.TempDir(), 4*blockSize, WithHotBytes(0))
	ctx := context.Background()
	var ds [5][32]byte
	for i := range ds {
		var b []byte
		ds[i], b = chunkOf(uint64(i), blockSize)
		if i == 4 {
			s.Get(ctx, ds[0]) // 0 is now more recent than 1
		}
		if err := s.Put(ctx, ds[i], b); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range []bool{true, false, true, true, true} {
		if s.Has(ds[i]) != want {
			t.Errorf("chunk %d cached: %v, want %v", i, !want, want)
		}
	}
}

func TestStorePinned(t *testing.T) {
	s := openStore(t, t.TempDir(), 2*blockSize, WithHotBytes(0))
	ctx := context.Background()
	a, ab := chunkOf(1, blockSize)
	b, bb := chunkOf(2, blockSize)
	c, cb := chunkOf(3, blockSize)
	s.Put(ctx, a, ab)
	s.Put(ctx, b, bb)
	unpinA, _ := s.Pin(a)
	if err := s.Put(ctx, c, cb); err != nil {
		t.Fatal(err)
	}
	if !s.Has(a) || s.Has(b) || !s.Has(c) {
		t.Fatalf("pinned a is the oldest: want a and c kept, b evicted")
	}
	unpinC, _ := s.Pin(c)
	if err := s.Put(ctx, b, bb); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("put with every chunk pinned: %v, want ErrStoreFull", err)
	}
	unpinA()
	unpinA() // idempotent
	if err := s.Put(ctx, b, bb); err != nil || s.Has(a) {
		t.Fatalf("put after unpinning: %v, a kept %v", err, s.Has(a))
	}
	unpinC()
	if big := make([]byte, 3*blockSize); !errors.Is(s.Put(ctx, sha256.Sum256(big), big), ErrStoreFull) {
		t.Error("a chunk bigger than the bound was accepted")
	}
}

func TestStoreRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenStore(ctx, dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(ctx, dir, 1<<20); err == nil {
		t.Fatal("a second store opened the same directory")
	}
	var ds [4][32]byte
	for i := range ds {
		var b []byte
		ds[i], b = chunkOf(uint64(i), 5000)
		s.Put(ctx, ds[i], b)
		// Modification times order the LRU after a restart: make 2 the oldest.
		_, file := s.path(ds[i])
		mt := time.Now().Add(time.Duration(i) * time.Minute)
		if i == 2 {
			mt = time.Now().Add(-time.Hour)
		}
		os.Chtimes(file, mt, mt)
	}
	before := s.Stats()
	s.Close()
	// Leftovers of a crash: temporary files and a stranger.
	leaf, _ := s.path(ds[0])
	for _, n := range []string{tmpPrefix + "abc-123", "junk"} {
		os.WriteFile(filepath.Join(leaf, n), []byte("partial"), 0o600)
	}

	s = openStore(t, dir, 1<<20, WithHotBytes(0))
	if st := s.Stats(); st.Chunks != 4 || st.Used != before.Used {
		t.Fatalf("after restart: %+v, before %+v", st, before)
	}
	diskUsage(t, dir) // fails on temporary files
	if _, err := os.Stat(filepath.Join(leaf, "junk")); err == nil {
		t.Error("a foreign file in a fan-out directory was kept")
	}
	for _, d := range ds {
		if b, ok := s.Get(ctx, d); !ok || sha256.Sum256(b) != d {
			t.Fatal("chunk lost across a restart")
		}
	}
	s.Close()
	// A smaller bound evicts the oldest first.
	s = openStore(t, dir, 3*8192, WithHotBytes(0))
	if s.Has(ds[2]) || !s.Has(ds[3]) || s.Stats().Used > 3*8192 {
		t.Errorf("reopening with a smaller bound: %+v", s.Stats())
	}
}

func TestStoreCorruptFile(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openStore(t, dir, 1<<20, WithHotBytes(0))
	d1, b1 := chunkOf(1, 9000)
	d2, b2 := chunkOf(2, 9000)
	s.Put(ctx, d1, b1)
	s.Put(ctx, d2, b2)
	_, f1 := s.path(d1)
	_, f2 := s.path(d2)
	b1[100] ^= 1
	os.WriteFile(f1, b1, 0o600)        // a flipped bit
	os.WriteFile(f2, b2[:4096], 0o600) // torn
	for _, d := range [][32]byte{d1, d2} {
		if _, ok := s.Get(ctx, d); ok {
			t.Fatal("a corrupt chunk file was served")
		}
	}
	for _, f := range []string{f1, f2} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("corrupt %s not deleted", f)
		}
	}
	if st := s.Stats(); st.Corrupt != 2 || st.Chunks != 0 || st.Used != 0 {
		t.Errorf("stats: %+v", st)
	}
}

const crashChildEnv = "BLOCKCACHE_CRASH_CHILD"

// crashChild fills a store forever, printing each digest once it is in;
// the parent kills it mid-write.
func crashChild() {
	ctx := context.Background()
	s, err := OpenStore(ctx, os.Getenv(crashChildEnv), 64<<20, WithHotBytes(0))
	if err != nil {
		panic(err)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := uint64(0); ; i++ {
		d, b := chunkOf(i, 256<<10+int(i%7)*1000)
		if err := s.Put(ctx, d, b); err != nil {
			panic(err)
		}
		w.WriteString(hex.EncodeToString(d[:]) + "\n")
		w.Flush()
	}
}

func TestStoreCrashMidWrite(t *testing.T) {
	testutil.SkipIfShort(t, "starts a child process")
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var done [][32]byte
	for sc.Scan() && len(done) < 300 { // well past the bound: evicting too
		d, ok := parseDigest(sc.Text())
		if !ok {
			t.Fatalf("child said %q", sc.Text())
		}
		done = append(done, d)
	}
	cmd.Process.Kill() // SIGKILL, mid-write
	cmd.Wait()
	if len(done) < 300 {
		t.Fatalf("child stopped after %d chunks", len(done))
	}

	s := openStore(t, dir, 64<<20, WithHotBytes(0))
	st := s.Stats()
	if st.Chunks == 0 || st.Used > 64<<20 {
		t.Fatalf("after the crash: %+v", st)
	}
	used, files := diskUsage(t, dir) // no temporary files, every file hashes right
	if used != st.Used || files != st.Chunks {
		t.Errorf("on disk %d bytes in %d files, store says %+v", used, files, st)
	}
	// The newest chunks the child finished are there and verify.
	for _, d := range done[len(done)-20:] {
		if b, ok := s.Get(context.Background(), d); !ok || sha256.Sum256(b) != d {
			t.Fatalf("chunk %x, written before the crash, is lost or wrong", d[:8])
		}
	}
}

// TestStoreLayout: chunk files live in DIR/ab/abcd..., the 256 fan-out
// directories made when the store opens, so storing a chunk makes no
// directory; a cache of the earlier two-level layout (DIR/ab/cd/abcd...)
// is moved into it whole on open, its temporary files dropped.
func TestStoreLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// A cache as the two-level layout left it: 20 chunks, a temporary
	// file of an interrupted write, and a chunk in the wrong directory.
	var ds [20][32]byte
	for i := range ds {
		var b []byte
		ds[i], b = chunkOf(uint64(100+i), 3000+i)
		h := hex.EncodeToString(ds[i][:])
		leaf := filepath.Join(dir, h[:2], h[2:4])
		if err := os.MkdirAll(leaf, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(leaf, h), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			os.WriteFile(filepath.Join(leaf, tmpPrefix+h[:16]+"-1234"), b[:100], 0o600)
		}
	}
	stray, sb := chunkOf(99, 2000)
	sh := hex.EncodeToString(stray[:])
	wrong := filepath.Join(dir, "00", "00")
	if sh[:4] == "0000" {
		wrong = filepath.Join(dir, "ff", "ff")
	}
	os.MkdirAll(wrong, 0o700)
	os.WriteFile(filepath.Join(wrong, sh), sb, 0o600)

	s := openStore(t, dir, 1<<20, WithHotBytes(0))
	if st := s.Stats(); st.Chunks != len(ds) {
		t.Errorf("%d chunks after opening the two-level layout, want %d", st.Chunks, len(ds))
	}
	for _, d := range ds {
		if b, ok := s.Get(ctx, d); !ok || sha256.Sum256(b) != d {
			t.Fatalf("chunk %x lost moving to one level", d[:4])
		}
	}
	if _, ok := s.Get(ctx, stray); ok {
		t.Error("a chunk file in a directory its digest does not name was kept")
	}
	dirs := func() (n int) {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != dir {
				n++
				if rel, _ := filepath.Rel(dir, p); len(rel) != 2 || !isHexByte(rel) {
					t.Errorf("directory %s in the store", rel)
				}
			}
			return err
		})
		return n
	}
	if n := dirs(); n != fanOut {
		t.Errorf("%d directories in the store, want the %d fan-out directories", n, fanOut)
	}
	if _, files := diskUsage(t, dir); files != len(ds) {
		t.Errorf("%d files in the store, want %d", files, len(ds))
	}
	for i := range 50 {
		d, b := chunkOf(uint64(1000+i), 1000)
		if err := s.Put(ctx, d, b); err != nil {
			t.Fatal(err)
		}
		if _, file := s.path(d); filepath.Dir(filepath.Dir(file)) != dir {
			t.Fatalf("chunk file %s is not one level below the store", file)
		}
	}
	if n := dirs(); n != fanOut {
		t.Errorf("storing chunks made directories: %d, want %d", n, fanOut)
	}
}
