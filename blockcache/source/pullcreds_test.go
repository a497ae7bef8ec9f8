package source

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-project/sluice/blockcache/source/crikeychain"
	"github.com/sluice-project/sluice/imageconv/artifact"
)

// TestPullCredentials: an image in a registry that wants a password is
// denied with the node's credentials alone, and opens and reads with the
// credentials its pull came with (crikeychain), which serve that image
// only.
func TestPullCredentials(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// The same registry behind basic authentication.
	origin, err := url.Parse(e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	fwd := httputil.NewSingleHostReverseProxy(origin)
	private := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "puller" || p != "pull-Secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		fwd.ServeHTTP(w, r)
	}))
	t.Cleanup(private.Close)
	host := private.Listener.Addr().String()
	req := Request{Image: host + "/app:v1", ManifestDigest: e.app.ManifestDigest}
	other := Request{Image: host + "/plain:v1", ManifestDigest: e.plain.ManifestDigest}
	nodeOnly := []Option{WithPlainHTTP(host), WithKeychain(authn.NewMultiKeychain())}

	_, err = New(ctx, e.store, e.exporter, nodeOnly...).Open(ctx, req)
	if !errors.Is(err, artifact.ErrRegistryDenied) || Reason(err) != ReasonDenied {
		t.Fatalf("Open without credentials: %v (reason %q), want registry denied access", err, Reason(err))
	}

	creds := crikeychain.NewStore()
	if _, err := creds.Put(req.Image, &runtime.AuthConfig{Username: "puller", Password: "pull-Secret"}); err != nil {
		t.Fatal(err)
	}
	src := New(ctx, e.store, e.exporter, append(nodeOnly, WithPullCredentials(creds), WithSaveDir(t.TempDir()))...)
	h, err := src.Open(ctx, req)
	if err != nil {
		t.Fatalf("Open with the pull's credentials: %v", err)
	}
	defer h.Close()
	buf := make([]byte, 64<<10)
	for off := int64(0); off < h.Image().Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), h.Image().Size()-off)
		if _, err := h.Image().ReadAt(buf[:n], off); err != nil {
			t.Fatalf("reading at %d with the pull's credentials: %v", off, err)
		}
	}
	// Another image of the registry has had no pull with credentials.
	if _, err := src.Open(ctx, other); !errors.Is(err, artifact.ErrRegistryDenied) {
		t.Errorf("Open of an image pulled without credentials: %v, want registry denied access", err)
	}
}
