package serve

import (
	"encoding/hex"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/faultproxy"
)

// blockLen is what most reads of these tests ask for: one kernel block.
const blockLen = 4096

// TestRegistryFaults reads on ONE NBD connection (nbdsh) while the proxy in
// front of the registry injects faults (a second connection joins in one
// case); each case reads chunks no earlier read fetched, so each read has
// to go to the registry:
//   - down (connections closed), 503, or answers cut off mid-body when the
//     read starts, back within the read timeout: the read succeeds with the
//     right bytes;
//   - down for longer than --read-timeout: that read fails with EIO, not
//     before the deadline, and once the registry is back the same
//     connection reads that block and others;
//   - a second read of the same block, on another connection, that joins
//     the first read's fetch just before it times out: it keeps its own
//     deadline, and succeeds when the registry is back within it;
//   - slow, within the deadline: the read succeeds;
//   - one answer with a flipped bit: the chunk is fetched again and the
//     read succeeds with the right bytes;
//   - every answer flipped: reads of the whole chunk fail with EIO, never
//     return the flipped bytes, nothing corrupt is cached, and the right
//     bytes come once the registry answers correctly again;
//   - the same with answers forged into valid zstd frames (checksum and
//     length right, one bit of content wrong), which only the chunk's
//     sha256 can catch;
//   - Range ignored (200 with the whole blob): right bytes, for chunks at
//     the start and at the end of the data blob.
func TestRegistryFaults(t *testing.T) {
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	sh := openShell(t, srv.uri(e.image))
	pick := e.picker()
	p := e.proxy

	// blockOf is the block each case reads in chunk i: not the chunk's
	// first, so the copy out of the chunk is checked too.
	blockOf := func(i int) int64 { return e.chunkOff(i) + blockLen }
	wantOK := func(t *testing.T, what string, i int, r readResult) {
		t.Helper()
		switch {
		case r.Errno != 0:
			t.Errorf("%s: read of chunk %d failed after %v: errno %d: %s", what, i, r.Elapsed, r.Errno, r.Message)
		case r.Sum != e.refSum(blockOf(i), blockLen):
			t.Errorf("%s: read of chunk %d returned bytes that differ from the ext4 image", what, i)
		}
	}
	// A first read in Pass mode, so the cases below start with the
	// server's registry client set up.
	first := pick.next(t)
	wantOK(t, "registry up", first, sh.read(t, blockOf(first), blockLen))

	t.Run("registry back within the deadline", func(t *testing.T) {
		for _, mode := range []faultproxy.Mode{faultproxy.Down, faultproxy.Unavailable, faultproxy.Cut} {
			i := pick.next(t)
			before := p.Stats()
			p.SetMode(mode)
			sh.start(t, blockOf(i), blockLen)
			time.Sleep(outage)
			mid := p.Stats()
			refused := mid.Refused - before.Refused + mid.Cut - before.Cut
			p.SetMode(faultproxy.Pass)
			r := sh.result(t)
			wantOK(t, mode.String()+" for "+outage.String(), i, r)
			if refused == 0 {
				t.Errorf("%s: no request failed while the registry was %s: the fault was not exercised", mode, mode)
			}
			t.Logf("registry %s for %v: read answered after %v (%d requests refused)", mode, outage, r.Elapsed.Round(time.Millisecond), refused)
		}
	})

	t.Run("registry down past the deadline", func(t *testing.T) {
		i := pick.next(t)
		p.SetMode(faultproxy.Down)
		r := sh.read(t, blockOf(i), blockLen)
		p.SetMode(faultproxy.Pass)
		switch {
		case r.Errno == 0:
			t.Fatalf("read of chunk %d succeeded with the registry down", i)
		case r.Errno != int(syscall.EIO):
			t.Errorf("read with the registry down: errno %d (%s), want EIO", r.Errno, r.Message)
		}
		if r.Elapsed < readTimeout-50*time.Millisecond {
			t.Errorf("EIO after %v, before the read timeout of %v", r.Elapsed, readTimeout)
		}
		if r.Elapsed > readTimeout+5*time.Second {
			t.Errorf("EIO only after %v, the read timeout is %v", r.Elapsed, readTimeout)
		}
		t.Logf("registry down: EIO after %v", r.Elapsed.Round(time.Millisecond))
		// The same connection, the registry back: the failed block, then
		// another.
		wantOK(t, "the failed block again, registry back", i, sh.read(t, blockOf(i), blockLen))
		j := pick.next(t)
		wantOK(t, "another block, registry back", j, sh.read(t, blockOf(j), blockLen))
	})

	// A read that joins a fetch started by an earlier read, shortly before
	// that fetch times out, still has its own deadline: it succeeds when
	// the registry comes back after the first read's deadline but within
	// its own. The second read comes on a second connection.
	t.Run("late joiner keeps its own deadline", func(t *testing.T) {
		sh2 := openShell(t, srv.uri(e.image))
		i := pick.next(t)
		p.SetMode(faultproxy.Down)
		sh.start(t, blockOf(i), blockLen)
		time.Sleep(readTimeout * 2 / 3)
		sh2.start(t, blockOf(i), blockLen)
		r1 := sh.result(t)
		time.Sleep(outage / 2)
		p.SetMode(faultproxy.Pass)
		r2 := sh2.result(t)
		if r1.Errno != int(syscall.EIO) {
			t.Errorf("first read, registry down past its deadline: errno %d (%s), want EIO", r1.Errno, r1.Message)
		}
		wantOK(t, "second read, registry back within its deadline", i, r2)
		t.Logf("first read: EIO after %v; second read answered after %v", r1.Elapsed.Round(time.Millisecond), r2.Elapsed.Round(time.Millisecond))
	})

	t.Run("slow registry within the deadline", func(t *testing.T) {
		i := pick.next(t)
		before := p.Stats()
		p.SetDelay(readTimeout / 3)
		p.SetMode(faultproxy.Slow)
		r := sh.read(t, blockOf(i), blockLen)
		p.SetMode(faultproxy.Pass)
		wantOK(t, "slow registry", i, r)
		if p.Stats().Delayed == before.Delayed {
			t.Error("no request was delayed: the fault was not exercised")
		}
	})

	t.Run("one corrupt answer is fetched again", func(t *testing.T) {
		i := pick.next(t)
		before := p.Stats()
		p.FlipNext(1)
		r := sh.read(t, blockOf(i), blockLen)
		p.SetMode(faultproxy.Pass)
		wantOK(t, "one flipped answer", i, r)
		if n := p.Stats().Flipped - before.Flipped; n != 1 {
			t.Errorf("%d answers flipped, want 1: the fault was not exercised", n)
		}
	})

	// Wrong bytes, caught by zstd's own frame checksum (FlipBit) or only by
	// the chunk's sha256 (ForgeContent). These cases read whole chunks, so
	// any wrong byte would be in what is returned.
	for _, c := range []struct {
		name string
		mode faultproxy.Mode
		pick func(*testing.T) int
	}{
		{"flipped bits are never served or cached", faultproxy.FlipBit, pick.next},
		{"wrong content in valid frames is never served or cached", faultproxy.ForgeContent, pick.incompressible},
	} {
		t.Run(c.name, func(t *testing.T) {
			i := c.pick(t)
			off, n := e.chunkOff(i), e.index.ChunkLen(i)
			before := p.Stats()
			p.SetMode(c.mode)
			for try := range 2 {
				r := sh.read(t, off, n)
				switch {
				case r.Errno == 0 && r.Sum != e.refSum(off, n):
					t.Errorf("try %d: read of chunk %d SERVED WRONG BYTES", try, i)
				case r.Errno == 0:
					t.Errorf("try %d: read of chunk %d succeeded although every answer was wrong", try, i)
				case r.Errno != int(syscall.EIO):
					t.Errorf("try %d: errno %d (%s), want EIO", try, r.Errno, r.Message)
				default:
					t.Logf("try %d: EIO after %v", try, r.Elapsed.Round(time.Millisecond))
				}
			}
			if after := p.Stats(); after.Flipped == before.Flipped && after.Forged == before.Forged {
				t.Errorf("no answer was changed: the %s fault was not exercised", c.mode)
			}
			digest := hex.EncodeToString(e.index.Chunks[i].Digest[:])
			if scanCache(t, srv.cacheDir).chunks[digest] {
				t.Errorf("chunk %d (%s) is cached although every answer for it was wrong", i, digest)
			}
			p.SetMode(faultproxy.Pass)
			r := sh.read(t, off, n)
			if r.Errno != 0 || r.Sum != e.refSum(off, n) {
				t.Errorf("chunk %d with right answers again: errno %d (%s), right bytes %v", i, r.Errno, r.Message, r.Sum == e.refSum(off, n))
			}
			// The reader is answered once the chunk is verified; its file
			// is written right after, so wait for it.
			var cache cacheScan
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if cache = scanCache(t, srv.cacheDir); cache.chunks[digest] || time.Now().After(deadline) {
					break
				}
			}
			if !cache.chunks[digest] {
				t.Errorf("chunk %d not cached within 10 s of a good read", i)
			}
			for _, b := range cache.bad {
				t.Errorf("cache file %s does not match its name", b)
			}
		})
	}

	t.Run("Range ignored", func(t *testing.T) {
		before := p.Stats()
		p.SetMode(faultproxy.IgnoreRange)
		for _, i := range []int{pick.next(t), pick.last(t)} {
			wantOK(t, "200 answer to a Range request", i, sh.read(t, blockOf(i), blockLen))
		}
		p.SetMode(faultproxy.Pass)
		if p.Stats().RangeDropped == before.RangeDropped {
			t.Error("no Range header was dropped: the fault was not exercised")
		}
	})
}
