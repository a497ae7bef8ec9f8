package source

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/test/testutil"
)

// writeHostsFor writes a hosts.toml for host (host:port) under a new
// config_path and returns the config_path.
func writeHostsFor(t *testing.T, host, content string) (root, file string) {
	t.Helper()
	root = t.TempDir()
	dir := filepath.Join(root, strings.Replace(host, ":", "_", 1)+"_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(dir, "hosts.toml")
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, file
}

// TestOpenThroughMirror: with a hosts.toml naming a mirror, the lookup and
// the chunk fetches of an opened image go to the mirror.
func TestOpenThroughMirror(t *testing.T) {
	e := newEnv(t)
	u, _ := url.Parse(e.srv.URL)
	var blobGets atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(u)
	mirror := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	root, _ := writeHostsFor(t, e.host, `[host."http://`+mirror+`"]`+"\n"+`capabilities = ["pull", "resolve"]`+"\n")
	// No metadata fetch on open: it could fetch the chunk read below
	// before lookupGets is taken.
	src := e.source(WithRegistryHosts(registryhosts.New(root)), WithImageOptions(blockcache.WithMetadataFirst(false)))
	h, err := src.Open(context.Background(), e.app)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lookupGets := blobGets.Load() // the index blob
	if _, err := h.Image().ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if lookupGets < 1 || blobGets.Load() <= lookupGets || h.Image().Stats().Fetcher.MirrorAnswers == 0 {
		t.Errorf("blob GETs at the mirror: %d by the lookup, %d in all; mirror answers %d: want the index and the chunks from the mirror",
			lookupGets, blobGets.Load(), h.Image().Stats().Fetcher.MirrorAnswers)
	}
}

// TestOpenBadHostsConfig: a malformed hosts.toml fails the registry's
// images with ReasonHostsConfig, naming the file and the key.
func TestOpenBadHostsConfig(t *testing.T) {
	e := newEnv(t)
	root, file := writeHostsFor(t, e.host, `[host."http://127.0.0.1:1"]`+"\n"+`capabilities = ["pul"]`+"\n")
	_, err := e.source(WithRegistryHosts(registryhosts.New(root))).Open(context.Background(), e.app)
	if !errors.Is(err, registryhosts.ErrBadConfig) || Reason(err) != ReasonHostsConfig || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "capabilities") {
		t.Fatalf("got %v (reason %q), want ErrBadConfig naming %s and capabilities", err, Reason(err), file)
	}
}
