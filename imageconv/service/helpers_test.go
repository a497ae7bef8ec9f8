package service

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	sluicetest "github.com/sluice-project/sluice/test/testutil"
)

// fixture is a running service, its registry and its log.
type fixture struct {
	t        *testing.T
	host     string // the registry
	svc      *Service
	http     *httptest.Server
	state    string
	work     string
	log      *syncBuffer
	stop     context.CancelFunc
	stopped  chan struct{}
	key      *signature.PrivateKey
	registry http.Handler
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func signKey(t *testing.T) *signature.PrivateKey {
	t.Helper()
	priv, _, err := signature.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(signature.PasswordEnv, "")
	k, err := signature.LoadPrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newFixture starts a service over an in-process registry (with the
// referrers API).
func newFixture(t *testing.T, opts ...Option) *fixture {
	t.Helper()
	f := &fixture{t: t, registry: sluicetest.NewRegistry(), state: t.TempDir(), work: t.TempDir(), log: &syncBuffer{}}
	f.host = sluicetest.Serve(t, f.registry)
	f.key = signKey(t)
	f.start(append([]Option{WithSignKey(f.key), WithPlainHTTP()}, opts...)...)
	return f
}

func (f *fixture) start(opts ...Option) {
	f.t.Helper()
	ctx := zerolog.New(f.log).WithContext(context.Background())
	svc, err := New(ctx, f.state, f.work, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.svc = svc
	f.http = httptest.NewServer(svc.Handler())
	runCtx, stop := context.WithCancel(ctx)
	f.stop, f.stopped = stop, make(chan struct{})
	go func() { svc.Run(runCtx); close(f.stopped) }()
	f.t.Cleanup(f.shutdown)
}

func (f *fixture) shutdown() {
	if f.stop == nil {
		return
	}
	f.stop()
	<-f.stopped
	f.http.Close()
	f.svc.Close()
	f.stop = nil
}

// pushImage pushes a one-layer image holding content as repo:tag and
// returns its digest.
func (f *fixture) pushImage(repo, tag, content string) v1.Hash {
	f.t.Helper()
	blob := sluicetest.LayerBlob(f.t, sluicetest.LayerSpec{"etc/": "", "etc/content": content})
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil })
	if err != nil {
		f.t.Fatal(err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "amd64", RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		f.t.Fatal(err)
	}
	if img, err = mutate.AppendLayers(img, l); err != nil {
		f.t.Fatal(err)
	}
	ref := f.ref(repo + ":" + tag)
	if err := remote.Write(ref, img); err != nil {
		f.t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fixture) ref(s string) name.Reference {
	f.t.Helper()
	r, err := name.ParseReference(f.host+"/"+s, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// pushEvent returns distribution's envelope of one manifest push.
func pushEvent(host, repo, tag, mediaType string, d v1.Hash, userAgent string) string {
	return fmt.Sprintf(`{"events": [{"id": "e-%s", "timestamp": "2026-12-06T10:53:29.049413056Z", "action": "push",
  "target": {"mediaType": %q, "size": 424, "digest": %q, "length": 424, "repository": %q,
    "url": "http://%s/v2/%s/manifests/%s", "tag": %q},
  "request": {"id": "r", "addr": "127.0.0.1:45142", "host": %q, "method": "PUT", "useragent": %q},
  "actor": {}, "source": {"addr": "vm:5000", "instanceID": "i"}}]}`,
		d.Hex[:8], mediaType, d, repo, host, repo, d, tag, host, userAgent)
}

func (f *fixture) post(path, contentType, body string) (int, string) {
	f.t.Helper()
	resp, err := http.Post(f.http.URL+path, contentType, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (f *fixture) request(image string) (int, convertAnswer) {
	f.t.Helper()
	b, _ := json.Marshal(map[string]string{"image": image})
	code, body := f.post("/convert", "application/json", string(b))
	var ans convertAnswer
	if err := json.Unmarshal([]byte(body), &ans); err != nil {
		f.t.Fatalf("/convert answered %d %q", code, body)
	}
	return code, ans
}

// count returns sluice_convert_conversions_total{outcome, reason}.
func (f *fixture) count(outcome, reason string) float64 {
	return testutil.ToFloat64(f.svc.metrics.conversions.WithLabelValues(outcome, reason))
}

func (f *fixture) received(endpoint, result string) float64 {
	return testutil.ToFloat64(f.svc.metrics.received.WithLabelValues(endpoint, result))
}

// waitIdle waits until no job is queued or running.
func (f *fixture) waitIdle() {
	f.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		q, r := f.svc.queue.depth()
		if q == 0 && r == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%d jobs queued, %d running after 2 min; log:\n%s", q, r, f.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tarOf(t *testing.T, name string, body []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body)
	tw.Close()
	return buf.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}
