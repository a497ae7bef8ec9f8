package artifact_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

// TestMinImageSize: an image whose artifact declares a flattened size
// under WithMinImageSize's bound is given up right after the referrers
// list (no artifact manifest or index fetched), with ErrSmallImage naming
// the size; at the bound it is looked up as usual, and 0 turns it off.
func TestMinImageSize(t *testing.T) {
	reg := testutil.NewRegistry()
	var (
		mu    sync.Mutex
		paths []string
	)
	host := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		reg.ServeHTTP(w, r)
	}))
	ref, digest := pushImage(t, host, "app", "app\n")
	art := convert(t, ref, 64<<10)
	ctx := context.Background()
	full, err := artifact.LookupManifest(ctx, ref.String(), digest.String(), artifact.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	size := full.Index.ImageSize
	if full.Descriptor.Digest != art || size <= 0 {
		t.Fatalf("lookup without a bound: %s of %d bytes, want %s", full.Descriptor.Digest, size, art)
	}

	mu.Lock()
	paths = nil
	mu.Unlock()
	_, err = artifact.LookupManifest(ctx, ref.String(), digest.String(), artifact.WithPlainHTTP(), artifact.WithMinImageSize(size+1))
	var serr *artifact.SmallImageError
	if !errors.Is(err, artifact.ErrSmallImage) || !errors.As(err, &serr) || serr.Size != size || serr.Min != size+1 {
		t.Fatalf("bound %d over an image of %d: %v, want ErrSmallImage with both sizes", size+1, size, err)
	}
	if errors.Is(err, artifact.ErrRegistryUnreachable) || errors.Is(err, artifact.ErrNoArtifact) {
		t.Errorf("%v: also counts as another failure", err)
	}
	mu.Lock()
	listed := false
	for _, p := range paths {
		listed = listed || strings.Contains(p, "/referrers/")
		if !strings.Contains(p, "/referrers/") && !strings.Contains(p, "/manifests/sha256-") && p != "GET /v2/" {
			t.Errorf("request %s after the referrers list named a small image", p)
		}
	}
	if !listed {
		t.Errorf("requests %v: no referrers list", paths)
	}
	mu.Unlock()

	for _, min := range []int64{size, 0} {
		got, err := artifact.LookupManifest(ctx, ref.String(), digest.String(), artifact.WithPlainHTTP(), artifact.WithMinImageSize(min))
		if err != nil || got.Descriptor.Digest != art {
			t.Errorf("bound %d over an image of %d: %v, want the artifact", min, size, err)
		}
	}
}
