package artifact

import (
	"errors"
	"slices"
	"testing"
)

func TestProfileRoundTrip(t *testing.T) {
	p := Profile{ChunkSize: 64 << 10, Chunks: []int{7, 0, 3, 1<<32 - 1}}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseProfile(b)
	if err != nil || got.ChunkSize != p.ChunkSize || !slices.Equal(got.Chunks, p.Chunks) {
		t.Fatalf("ParseProfile(MarshalBinary(%+v)) = %+v, %v", p, got, err)
	}
	if _, err := (Profile{Chunks: []int{-1}}).MarshalBinary(); !errors.Is(err, ErrBadProfile) {
		t.Errorf("negative index: %v", err)
	}
	bad := map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("SLUICEIX"), b[8:]...),
		"version":   patch(b, 8, 2),
		"flags":     patch(b, 12, 1),
		"truncated": b[:len(b)-1],
		"count":     patch(b, 24, 5),
	}
	for name, in := range bad {
		if _, err := ParseProfile(in); !errors.Is(err, ErrBadProfile) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func patch(b []byte, at int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[at] = v
	return c
}
