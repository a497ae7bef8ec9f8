package faultproxy

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestForgeFrames checks the forged frames still decode, with their
// checksum verified, to the original length but not the original bytes,
// and that frames without a raw block are left alone.
func TestForgeFrames(t *testing.T) {
	random := make([]byte, 64<<10)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(random)
	text := bytes.Repeat([]byte("compressible text, no raw block here\n"), 2000)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	// Two frames back to back, as in a coalesced range: the compressible
	// one first, so the raw block is in the second frame.
	first := enc.EncodeAll(text, nil)
	both := append(append([]byte(nil), first...), enc.EncodeAll(random, nil)...)
	forged := append([]byte(nil), both...)
	ok, err := forgeFrames(forged)
	if err != nil || !ok {
		t.Fatalf("forgeFrames: %v, %v", ok, err)
	}
	if len(forged) != len(both) || !bytes.Equal(forged[:len(first)], first) {
		t.Fatal("forgeFrames changed the length, or the frame without a raw block")
	}
	got, err := dec.DecodeAll(forged, nil)
	if err != nil {
		t.Fatalf("forged frames do not decode: %v", err)
	}
	want := append(append([]byte(nil), text...), random...)
	if len(got) != len(want) || bytes.Equal(got, want) {
		t.Fatalf("forged frames decode to %d bytes, equal to the original: %v", len(got), bytes.Equal(got, want))
	}

	onlyText := enc.EncodeAll(text, nil)
	if ok, err := forgeFrames(onlyText); ok || err != nil {
		t.Errorf("forgeFrames of a frame without a raw block: %v, %v", ok, err)
	}
}
