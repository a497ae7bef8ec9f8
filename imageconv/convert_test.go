package imageconv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

func TestConvertExportRoundTrip(t *testing.T) {
	host := testutil.Registry(t)
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
	a, err := artifact.Lookup(context.Background(), ref, artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if a.Descriptor.Digest != r1.Artifact || a.Index.ImageSize != r1.Summary.ImageSize {
		t.Fatalf("lookup found %s (%d bytes), converted %s", a.Descriptor.Digest, a.Index.ImageSize, r1.Artifact)
	}
	// The summary counts what the index holds.
	distinct := map[[32]byte]bool{}
	for _, c := range a.Index.Chunks {
		if !c.Zero() {
			distinct[c.Digest] = true
		}
	}
	if s := r1.Summary; s.Chunks != len(a.Index.Chunks) || s.ZeroChunks != a.Index.ZeroChunks() || s.UniqueChunks != len(distinct) {
		t.Errorf("summary %+v; the index has %d chunks, %d all-zero, %d distinct", s, len(a.Index.Chunks), a.Index.ZeroChunks(), len(distinct))
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

// TestExportPassesFsck converts an image bigger than one ext4 block group
// (128 MiB), so directories land past group 0, and checks the exported
// filesystem with e2fsck.
func TestExportPassesFsck(t *testing.T) {
	testutil.Require(t, testutil.Tool("e2fsck", "debugfs"))
	host := testutil.Registry(t)
	ref := pushImage(t, host, "big:v1",
		layerOf(t, []entry{{name: "zeros", body: strings.Repeat("\x00", 130<<20)}, {name: "d/", typ: '5'}, {name: "d/f", body: "data"}}),
		layerOf(t, randomTree(3, "usr", 20)),
		// Replaced and deleted files leave placeholders that must vanish.
		layerOf(t, []entry{{name: "usr/", typ: '5'}, {name: "usr/f0001", body: "new"}, {name: "usr/.wh.f0002"}, {name: ".wh.d"}}),
	)
	convertOne(t, ref)
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := Export(context.Background(), ref, out, WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck: %v\n%s", err, b)
	}
	// lost+found must be gone: debugfs lists the root.
	b, err := exec.Command("debugfs", "-R", "ls -l /", out).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, b)
	}
	if strings.Contains(string(b), "lost+found") || strings.Contains(string(b), "sluice-shadow") || strings.Contains(string(b), " d ") {
		t.Errorf("the root still lists lost+found:\n%s", b)
	}
	if !strings.Contains(string(b), "zeros") || !strings.Contains(string(b), "usr") {
		t.Errorf("the root misses entries:\n%s", b)
	}
}
