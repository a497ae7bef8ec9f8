package blockcache

import (
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// BenchmarkWarmRead4k: 4 KiB reads at random offsets in the non-zero
// chunks of an image whose chunks are all in chunk files (the memory layer
// off), as nbdserver's CachedReader path makes them: a pread plus what
// sluice adds to it.
func BenchmarkWarmRead4k(b *testing.B) {
	e := newEnv(b)
	e.store = openStore(b, b.TempDir(), 1<<30, WithHotBytes(0))
	im := e.open(WithBackgroundRate(0))
	// Warm: read everything once.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < im.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), im.Size()-off)
		if _, err := im.ReadAt(buf[:n], off); err != nil {
			b.Fatal(err)
		}
	}
	for s := im.Stats(); s.ChunksPresent < s.ChunksTotal; s = im.Stats() {
		time.Sleep(10 * time.Millisecond) // chunk files are written after reads are answered
	}
	cs := e.art.Index.ChunkSize
	var stored []int64 // every block of the non-zero chunks
	for i, c := range e.art.Index.Chunks {
		for b := int64(0); !c.Zero() && b < e.art.Index.ChunkLen(i); b += 4096 {
			stored = append(stored, int64(i)*cs+b)
		}
	}
	p := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		off := stored[rng.IntN(len(stored))]
		if !im.ReadAtCached(p, off) {
			b.Fatalf("ReadAtCached(%d) missed on a warm image", off)
		}
	}
}

// BenchmarkPread4k is BenchmarkWarmRead4k's floor: 4 KiB preads at the
// same offsets of one file holding the whole image (what nbdkit's file
// plugin does), page cache warm.
func BenchmarkPread4k(b *testing.B) {
	e := newEnv(b)
	f, err := os.CreateTemp(b.TempDir(), "image")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(e.f.want); err != nil {
		b.Fatal(err)
	}
	cs := e.art.Index.ChunkSize
	var stored []int64
	for i, c := range e.art.Index.Chunks {
		for k := int64(0); !c.Zero() && k < e.art.Index.ChunkLen(i); k += 4096 {
			stored = append(stored, int64(i)*cs+k)
		}
	}
	p := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.ReadAt(p, stored[rng.IntN(len(stored))]); err != nil {
			b.Fatal(err)
		}
	}
}
