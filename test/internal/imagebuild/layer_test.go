package imagebuild

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
	"time"
)

func TestParentsAndWhiteouts(t *testing.T) {
	b := New()
	t0 := time.Unix(1, 5)
	if _, err := b.Layer().Dir("a", Meta{Mode: 0o700, ModTime: t0}).File("a/b/c", nil, Meta{Mode: 0o644}).Tar(); err != nil {
		t.Fatal(err)
	}
	raw, err := b.Layer().Whiteout("a/b/c").Opaque("a/d").Tar()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name)
		if h.Name == "a/" && (h.Mode != 0o700 || !h.ModTime.Equal(t0)) {
			t.Errorf("parent a/ lost its declared metadata: %o %v", h.Mode, h.ModTime)
		}
	}
	want := []string{"a/", "a/b/", "a/b/.wh.c", "a/d/", "a/d/.wh..wh..opq"}
	if len(got) != len(want) {
		t.Fatalf("entries %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("entries %q, want %q", got, want)
		}
	}
	if _, err := b.Layer().File("x/y", nil, Meta{}).Dir("x", Meta{}).Tar(); err == nil {
		t.Error("a directory declared after its child was accepted")
	}
}

func TestImage(t *testing.T) {
	gz, err := New().Layer().File("f", []byte("hi"), Meta{Mode: 0o644}).Gzip()
	if err != nil {
		t.Fatal(err)
	}
	img, err := Image(gz)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	diffID, _ := layers[0].DiffID()
	digest, _ := layers[0].Digest()
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != diffID || diffID == digest {
		t.Errorf("diff ids %v, layer diff id %v, digest %v", cfg.RootFS.DiffIDs, diffID, digest)
	}
}
