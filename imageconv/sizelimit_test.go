package imageconv

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestMaxSourceSize: an image whose compressed layers pass the bound is
// refused before its layers are read; one whose uncompressed bytes pass it
// is refused while it is read, with nothing left in the work dir; one
// within it converts.
func TestMaxSourceSize(t *testing.T) {
	host := testutil.Registry(t)
	zeros := strings.Repeat("\x00", 4<<20) // 4 MiB that gzip makes a few KiB
	ref := pushImage(t, host, "bound/zeros", layerOf(t, []entry{{name: "zeros", body: zeros}}))
	r := convertOne(t, ref)
	src := r.Summary.SourceCompressed + r.Summary.SourceUncompressed
	if r.Summary.SourceCompressed >= 64<<10 || r.Summary.SourceUncompressed < 4<<20 {
		t.Fatalf("source is %d bytes compressed, %d uncompressed: want a small blob of a large tar", r.Summary.SourceCompressed, r.Summary.SourceUncompressed)
	}

	for _, tc := range []struct {
		what  string
		bound int64
		ok    bool
	}{
		{"compressed layers over the bound", r.Summary.SourceCompressed - 1, false},
		{"uncompressed bytes over the bound", src - 1, false},
		{"exactly the bound", src, true},
	} {
		t.Run(tc.what, func(t *testing.T) {
			work := t.TempDir()
			_, err := Convert(context.Background(), ref, WithPlainHTTP(), WithWorkDir(work), WithDryRun(), WithMaxSourceSize(tc.bound))
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrTooLarge)) {
				t.Fatalf("bound %d on a source of %d bytes: %v", tc.bound, src, err)
			}
			left, _ := os.ReadDir(work)
			if len(left) != 0 {
				t.Errorf("the work dir holds %d entries after Convert", len(left))
			}
		})
	}
}
