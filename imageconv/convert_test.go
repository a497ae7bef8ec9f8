package imageconv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConvertExportRoundTrip(t *testing.T) {
	host := testRegistry(t)
	ref := pushImage(t, host, "app:v1",
		layerOf(t, []entry{{name: "etc/", typ: '5'}, {name: "etc/hello", body: "hello world\n"}, {name: "big", body: strings.Repeat("x", 3<<20)}}),
		layerOf(t, []entry{{name: "etc/", typ: '5'}, {name: "etc/.wh.hello"}, {name: "etc/new", body: "new\n"}}),
	)
	r1 := convertOne(t, ref)
	if r1.Summary.Chunks == 0 || r1.Summary.ImageSize == 0 || r1.Summary.ImageSize%4096 != 0 {
		t.Fatalf("summary: %+v", r1.Summary)
	}
	r2 := convertOne(t, ref)
	if r1.Artifact != r2.Artifact {
		t.Fatalf("not deterministic: %s then %s", r1.Artifact, r2.Artifact)
	}
	a, err := Lookup(context.Background(), ref, WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if a.Descriptor.Digest != r1.Artifact || a.Index.ImageSize != r1.Summary.ImageSize {
		t.Fatalf("lookup found %s (%d bytes), converted %s", a.Descriptor.Digest, a.Index.ImageSize, r1.Artifact)
	}
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := Export(context.Background(), ref, out, WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Size() != r1.Summary.ImageSize {
		t.Fatalf("exported %v, %v", fi, err)
	}
}
