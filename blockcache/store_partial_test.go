package blockcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"testing"
)

// TestReadVerifiedOnlyTrustsCheckedFiles: partial reads skip hashing only
// for chunk files this process wrote or verified; after a restart a file is
// verified whole first, and a corrupt one is never served.
func TestReadVerifiedOnlyTrustsCheckedFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	d := sha256.Sum256(data)

	s := openStore(t, dir, 1<<20, WithHotBytes(0))
	if err := s.Put(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 100)
	if !s.ReadVerified(d, p, 1000) || !bytes.Equal(p, data[1000:1100]) {
		t.Fatal("a chunk this process wrote is not read in part")
	}
	if s.ReadVerified(d, make([]byte, 10), int64(len(data))-5) {
		t.Error("a read past the chunk's end succeeded")
	}
	s.Close()

	// Corrupt the file behind the store's back, then reopen.
	_, file := s.path(d)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[1050] ^= 1
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir, 1<<20, WithHotBytes(0))
	if s2.ReadVerified(d, p, 1000) {
		t.Fatal("an unverified file was read in part after a restart")
	}
	if _, ok := s2.Get(ctx, d); ok {
		t.Fatal("a corrupt chunk file was served")
	}
	if s2.Has(d) {
		t.Error("the corrupt chunk file is still indexed")
	}
}
