package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// LayerSpec is a test image layer: path -> content. A path ending in "/"
// is a directory; the content Whiteout deletes the path, Opaque (on a
// "dir/") hides what lower layers have in dir.
type LayerSpec map[string]string

const (
	Whiteout = "\x00whiteout"
	Opaque   = "\x00opaque"
)

// LayerBlob makes the gzipped tar of spec, entries sorted by path and
// dated 2023-11-14, so that the same spec always gives the same digest.
func LayerBlob(t testing.TB, spec LayerSpec) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	names := make([]string, 0, len(spec))
	for n := range spec {
		names = append(names, n)
	}
	sort.Strings(names)
	mtime := time.Unix(1700000000, 0)
	for _, n := range names {
		content := spec[n]
		var hdr tar.Header
		switch {
		case content == Whiteout:
			dir, base := filepath.Split(n)
			hdr = tar.Header{Name: dir + ".wh." + base, Typeflag: tar.TypeReg, Mode: 0o644}
		case content == Opaque:
			hdr = tar.Header{Name: n + ".wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}
		case strings.HasSuffix(n, "/"):
			hdr = tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o755}
		default:
			hdr = tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))}
		}
		hdr.ModTime = mtime
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			if _, err := io.WriteString(tw, content); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// RemoveAll removes every snapshot of sn, children first, as containerd's
// garbage collector does.
func RemoveAll(t testing.TB, ctx context.Context, sn snapshots.Snapshotter) {
	t.Helper()
	for {
		parents := map[string]bool{}
		var all []string
		if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			all = append(all, info.Name)
			parents[info.Parent] = true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(all) == 0 {
			return
		}
		for _, n := range all {
			if !parents[n] {
				if err := sn.Remove(ctx, n); err != nil {
					t.Fatalf("remove %s: %v", n, err)
				}
			}
		}
	}
}
