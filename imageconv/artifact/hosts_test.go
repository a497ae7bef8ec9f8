package artifact_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

// pathLog notes the method and path of requests made to it directly (not
// forwarded by a proxy, which sets X-Forwarded-For).
type pathLog struct {
	next http.Handler
	mu   sync.Mutex
	seen []string
}

func (p *pathLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Forwarded-For") == "" {
		p.mu.Lock()
		p.seen = append(p.seen, r.Method+" "+r.URL.Path)
		p.mu.Unlock()
	}
	p.next.ServeHTTP(w, r)
}

func (p *pathLog) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// The lookup asks the mirrors in order for what they may serve (the tag,
// the artifact manifest and index blob by digest), passing over one that
// is down and one that answers 404, and asks the registry itself only for
// the referrers, which the mirrors are not configured to list.
func TestLookupThroughMirrors(t *testing.T) {
	origin := &pathLog{next: testutil.NewRegistry()}
	host := testutil.Serve(t, origin)
	ref, _ := pushImage(t, host, "app", "app\n")
	art := convert(t, ref, 64<<10)
	originURL, _ := url.Parse("http://" + host)
	mirror := &pathLog{next: httputil.NewSingleHostReverseProxy(originURL)} // a pull-through cache
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	root := t.TempDir()
	dir := filepath.Join(root, strings.Replace(host, ":", "_", 1)+"_")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(`
[host."http://`+down+`"]
  capabilities = ["pull", "resolve"]
[host."http://`+testutil.Registry(t)+`"]
  capabilities = ["pull", "resolve"]
[host."http://`+testutil.Serve(t, mirror)+`"]
  capabilities = ["pull", "resolve"]
`), 0o644)
	hosts, err := registryhosts.New(root).Hosts(context.Background(), ref.Context().Registry)
	if err != nil {
		t.Fatal(err)
	}
	before := len(origin.requests())
	got, err := artifact.Lookup(context.Background(), ref.String(), artifact.WithPlainHTTP(), artifact.WithHosts(hosts))
	if err != nil {
		t.Fatal(err)
	}
	if got.Descriptor.Digest != art || got.Repo.RegistryStr() != host {
		t.Fatalf("found %s in %s, want %s in %s", got.Descriptor.Digest, got.Repo, art, host)
	}
	mirrored := strings.Join(mirror.requests(), "\n")
	for _, want := range []string{"GET /v2/app/manifests/v1", "GET /v2/app/manifests/" + art.String(), "GET /v2/app/blobs/sha256:"} {
		if !strings.Contains(mirrored, want) {
			t.Errorf("the mirror was not asked for %q; it saw:\n%s", want, mirrored)
		}
	}
	for _, r := range origin.requests()[before:] {
		if r != "GET /v2/" && !strings.HasPrefix(r, "GET /v2/app/referrers/") {
			t.Errorf("the registry itself was asked %q: want only the referrers (and pings)", r)
		}
	}
}
