package harness

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// TestDataLayer: the data layer (small here) is the same on every build,
// holds the files its layout says, and its bytes do not compress.
func TestDataLayer(t *testing.T) {
	dir := t.TempDir()
	d := dataLayout{fill: 4, fillBytes: 1 << 20, readBytes: 300_000}
	a, b := filepath.Join(dir, "a.tar.gz"), filepath.Join(dir, "b.tar.gz")
	for _, p := range []string{a, b} {
		if err := writeDataLayer(context.Background(), p, d); err != nil {
			t.Fatal(err)
		}
	}
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Fatal("two builds of the data layer differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(ab))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	sizes := map[string]int64{}
	var read []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			sizes[h.Name] = h.Size
			if h.Name == dataReadFile {
				if read, err = io.ReadAll(tr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if len(sizes) != d.fill+1 || sizes[dataReadFile] != d.readBytes || sizes["data/unread/03.bin"] != d.fillBytes {
		t.Errorf("files %v, want %d of %d bytes and %s of %d", sizes, d.fill, d.fillBytes, dataReadFile, d.readBytes)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	if z := enc.EncodeAll(read, nil); len(z) < len(read)*99/100 {
		t.Errorf("the read file compresses to %d of %d bytes: not incompressible", len(z), len(read))
	}
}
