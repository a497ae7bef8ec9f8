package serve

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/faultproxy"
	"github.com/sluice-project/sluice/test/testutil"
)

// cacheScan is what a chunk cache directory holds: chunk files by name
// (hex sha256), temporary files, and chunk files whose content does not
// match their name.
type cacheScan struct {
	chunks map[string]bool
	tmp    []string
	bad    []string
}

// scanCache reads the cache directory of a store (DIR/ab/cd/<hex sha256>,
// temporary files named .tmp-*), hashing every chunk file.
func scanCache(t *testing.T, dir string) cacheScan {
	t.Helper()
	c := cacheScan{chunks: map[string]bool{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // a temporary file renamed or removed meanwhile
			}
			return err
		}
		if d.IsDir() || p == filepath.Join(dir, ".lock") {
			return nil
		}
		name := d.Name()
		if strings.HasPrefix(name, ".tmp-") {
			c.tmp = append(c.tmp, p)
			return nil
		}
		b, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			return nil // evicted meanwhile
		}
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != name {
			c.bad = append(c.bad, p)
		}
		c.chunks[name] = true
		return nil
	})
	if err != nil {
		t.Fatalf("scanning the cache %s: %v", dir, err)
	}
	return c
}

// minCachedAtKill is how many chunks the killed server must have cached,
// so that the restart has something to serve from the cache.
const minCachedAtKill = 12

// TestKill9DuringBackgroundFetch kills the server with SIGKILL while it
// fetches the image in the background, once some but not all chunks are
// cached, and then damages one cached chunk file as a power loss could.
// A server restarted on the same socket path and cache directory removes
// the temporary files left behind; with the registry down (so from the
// cache alone) it serves every intact cached chunk and answers EIO, never
// the damaged bytes, for the damaged one; with the registry back, nbdcopy
// of the whole export equals the ext4 image, and every cache file matches
// its name.
func TestKill9DuringBackgroundFetch(t *testing.T) {
	testutil.Require(t, testutil.Tool("nbdcopy"))
	e := getEnv(t)
	cacheDir := filepath.Join(shortTempDir(t), "cache")
	// The first range of up to 4 MiB goes at once, the next after about
	// 2 s: a wide window with some chunks cached and not all. The kill
	// lands while the first range's chunks are being written.
	first := e.startServer(t, serveOpts{cacheDir: cacheDir, args: []string{"--background-rate", "2MiB"}})
	deadline := time.Now().Add(20 * time.Second)
	for len(scanCache(t, cacheDir).chunks) < minCachedAtKill {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d chunks cached 20 s after start with --background-rate 2MiB", minCachedAtKill)
		}
		time.Sleep(5 * time.Millisecond)
	}
	first.kill9()
	crashed := scanCache(t, cacheDir)
	t.Logf("killed with %d of %d distinct chunks cached, %d temporary files left", len(crashed.chunks), len(e.distinct), len(crashed.tmp))
	if len(crashed.chunks) >= len(e.distinct) {
		t.Fatalf("all %d chunks were cached before the kill: the test shows nothing", len(e.distinct))
	}
	for _, b := range crashed.bad {
		t.Errorf("after kill -9: cache file %s does not match its name", b)
	}
	var cached []int // distinct chunks cached, the first one to be damaged
	for _, i := range e.distinct {
		if crashed.chunks[hex.EncodeToString(e.index.Chunks[i].Digest[:])] {
			cached = append(cached, i)
		}
	}
	damaged := cached[0]
	damageChunkFile(t, cacheDir, e.index.Chunks[damaged].Digest)

	// Restarted as a supervisor would: same socket path (left behind by
	// the killed server), same cache.
	second := e.startServer(t, serveOpts{cacheDir: cacheDir, sock: first.sock})
	if tmp := scanCache(t, cacheDir).tmp; len(tmp) > 0 {
		t.Errorf("temporary files remain after the restart: %v", tmp)
	}
	// The registry down: only what the cache holds can be read.
	e.proxy.SetMode(faultproxy.Down)
	before := e.proxy.Stats()
	sh := openShell(t, second.uri(e.image))
	for _, i := range cached[1:] {
		off, n := e.chunkOff(i), e.index.ChunkLen(i)
		r := sh.read(t, off, n)
		switch {
		case r.Errno != 0:
			t.Errorf("chunk %d, cached before the kill, with the registry down: errno %d after %v: %s", i, r.Errno, r.Elapsed, r.Message)
		case r.Sum != e.refSum(off, n):
			t.Errorf("chunk %d, cached before the kill: wrong bytes", i)
		}
	}
	if n := e.proxy.Stats().Requests - before.Requests; n != 0 {
		t.Errorf("reading %d cached chunks made %d registry requests, want 0", len(cached)-1, n)
	}
	off, n := e.chunkOff(damaged), e.index.ChunkLen(damaged)
	switch r := sh.read(t, off, n); {
	case r.Errno == 0 && r.Sum != e.refSum(off, n):
		t.Errorf("chunk %d, damaged in the cache, registry down: SERVED THE DAMAGED BYTES", damaged)
	case r.Errno == 0:
		t.Errorf("chunk %d, damaged in the cache, registry down: right bytes, from where?", damaged)
	case r.Errno != int(syscall.EIO):
		t.Errorf("chunk %d, damaged in the cache, registry down: errno %d (%s), want EIO", damaged, r.Errno, r.Message)
	default:
		t.Logf("%d chunks read from the cache with the registry down; the damaged one got EIO", len(cached)-1)
	}
	e.proxy.SetMode(faultproxy.Pass)

	e.compareWithRef(t, "nbdcopy after the restart", nbdcopyExport(t, second.uri(e.image)))
	after := scanCache(t, cacheDir)
	if len(after.tmp) > 0 {
		t.Errorf("temporary files after the copy: %v", after.tmp)
	}
	for _, b := range after.bad {
		t.Errorf("after the restart: cache file %s does not match its name", b)
	}
	if len(after.chunks) != len(e.distinct) {
		t.Errorf("%d chunk files cached after a full copy, want %d", len(after.chunks), len(e.distinct))
	}
}

// damageChunkFile flips a bit in the middle of the cache file of a chunk,
// keeping its size and name.
func damageChunkFile(t *testing.T, cacheDir string, digest [32]byte) {
	t.Helper()
	h := hex.EncodeToString(digest[:])
	p := filepath.Join(cacheDir, h[:2], h) // blockcache.Store: DIR/ab/abcd...
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("damaging a cached chunk: %v", err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
