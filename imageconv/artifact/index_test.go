package artifact

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

func sampleIndex(imageSize, chunkSize int64) *Index {
	ix := &Index{ImageSize: imageSize, ChunkSize: chunkSize}
	n := ChunkCount(imageSize, chunkSize)
	ix.Chunks = make([]Chunk, n)
	var off uint64
	for i := range ix.Chunks {
		if i%7 == 3 {
			continue // zero chunk
		}
		l := uint32(chunkSize/3 + int64(i%100))
		ix.Chunks[i] = Chunk{Digest: sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)}), Offset: off, Length: l}
		off += uint64(l)
	}
	ix.DataSize = int64(off)
	return ix
}

func TestIndexRoundTrip(t *testing.T) {
	ix := sampleIndex(10<<20+4096, 64<<10)
	b, err := ix.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.ImageSize != ix.ImageSize || got.ChunkSize != ix.ChunkSize || got.DataSize != ix.DataSize || len(got.Chunks) != len(ix.Chunks) {
		t.Fatalf("geometry changed: %+v", got)
	}
	for i := range ix.Chunks {
		if got.Chunks[i] != ix.Chunks[i] {
			t.Fatalf("chunk %d: %+v, want %+v", i, got.Chunks[i], ix.Chunks[i])
		}
	}
	if got.ChunkLen(len(got.Chunks)-1) != 4096 {
		t.Errorf("last chunk length %d, want 4096", got.ChunkLen(len(got.Chunks)-1))
	}
	b2, _ := got.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Error("re-encoding changed the bytes")
	}
}

func TestParseIndexRejects(t *testing.T) {
	good, err := sampleIndex(1<<20, 64<<10).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":           nil,
		"short header":    good[:10],
		"bad magic":       mutate(func(b []byte) []byte { b[0] = 'X'; return b }),
		"future version":  mutate(func(b []byte) []byte { b[8] = 9; return b }),
		"unknown flags":   mutate(func(b []byte) []byte { b[12] = 1; return b }),
		"truncated table": good[:len(good)-1],
		"chunk count lie": mutate(func(b []byte) []byte { b[32]++; return b }),
		"odd chunk size":  mutate(func(b []byte) []byte { b[24] = 1; return b }),
		"huge image":      mutate(func(b []byte) []byte { b[23] = 0x40; return b }),
		"chunk past data": mutate(func(b []byte) []byte { b[40] = 1; b[41] = 0; b[42] = 0; return b }),
		"reserved header": mutate(func(b []byte) []byte { b[50] = 1; return b }),
		"reserved entry":  mutate(func(b []byte) []byte { b[indexHeaderSize+45] = 1; return b }),
		"huge chunk length": mutate(func(b []byte) []byte {
			e := b[indexHeaderSize:]
			e[43] = 0x7f
			return b
		}),
	}
	for name, b := range cases {
		if _, err := ParseIndex(b); !errors.Is(err, ErrBadIndex) {
			t.Errorf("%s: err = %v, want ErrBadIndex", name, err)
		}
	}
}

func FuzzParseIndex(f *testing.F) {
	good, _ := sampleIndex(1<<20, 64<<10).MarshalBinary()
	f.Add(good)
	f.Add(good[:indexHeaderSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := ParseIndex(b)
		if err != nil {
			return
		}
		// Whatever parses must be self-consistent and re-encode exactly.
		out, err := ix.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed index does not re-encode: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatal("re-encoding differs")
		}
	})
}

// BenchmarkParseIndex10GiB parses the index of a 10 GiB image at the
// default chunk size; the issue asks for well under 10 ms.
func BenchmarkParseIndex10GiB(b *testing.B) {
	raw, err := sampleIndex(10<<30, DefaultChunkSize).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseIndex(raw); err != nil {
			b.Fatal(err)
		}
	}
}
