package blockcache

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

// fixture is one image converted once for the whole package: the registry
// handler holding it, the artifact, the flattened image as Export gives it,
// and the data blob.
type fixture struct {
	reg  http.Handler
	repo string // repository name, without host
	art  *artifact.Artifact
	want []byte
	blob []byte
}

var (
	fixtureOnce sync.Once
	shared      *fixture
	fixtureErr  error
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

func getFixture(t testing.TB) *fixture {
	t.Helper()
	fixtureOnce.Do(func() { shared, fixtureErr = buildFixture() })
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return shared
}

func buildFixture() (*fixture, error) {
	ctx := context.Background()
	f := &fixture{reg: testutil.NewRegistry(), repo: "test/app"}
	srv := httptest.NewServer(f.reg)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text strings.Builder
	for i := 0; text.Len() < 1<<20; i++ {
		fmt.Fprintf(&text, "line %d of a compressible file\n", i)
	}
	layer, err := tarLayer(map[string][]byte{
		"random.bin": random,
		"text.txt":   []byte(text.String()),
		"zeros.bin":  make([]byte, 1<<20),
		"etc/hello":  []byte("hello\n"),
	})
	if err != nil {
		return nil, err
	}
	ref := host + "/" + f.repo + ":v1"
	if err := pushImage(ref, layer); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "blockcache-fixture-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	opts := []imageconv.Option{imageconv.WithPlainHTTP(), imageconv.WithWorkDir(work)}
	if _, err := imageconv.Convert(ctx, ref, append(opts, imageconv.WithChunkSize(64<<10))...); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	if f.art, err = artifact.Lookup(ctx, ref, artifact.WithPlainHTTP()); err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	out := filepath.Join(work, "image.ext4")
	if err := imageconv.Export(ctx, ref, out, opts...); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if f.want, err = os.ReadFile(out); err != nil {
		return nil, err
	}
	l, err := remote.Layer(f.art.Repo.Digest(f.art.Data.Digest.String()))
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if f.blob, err = io.ReadAll(rc); err != nil {
		return nil, err
	}
	return f, nil
}

// pushImage pushes a linux/amd64 image of one layer to ref (plain HTTP).
func pushImage(ref string, layer v1.Layer) error {
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(r, img)
}

// tarLayer is a layer of regular files, in name order.
func tarLayer(files map[string][]byte) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range slices.Sorted(maps.Keys(files)) {
		b := files[n]
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		tw.Write(b)
	}
	tw.Close()
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// env is one test's view of the fixture: a server with fault injection in
// front of the shared registry, and the artifact pointing at it.
type env struct {
	t      testing.TB
	f      *fixture
	faults *faultHandler
	art    *artifact.Artifact
	store  *Store
}

func newEnv(t testing.TB) *env {
	t.Helper()
	f := getFixture(t)
	e := &env{t: t, f: f}
	e.faults = &faultHandler{next: f.reg, blobPath: "/v2/" + f.repo + "/blobs/" + f.art.Data.Digest.String()}
	art := *f.art
	repo, err := name.NewRepository(testutil.Serve(t, e.faults)+"/"+f.repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	art.Repo = repo
	e.art = &art
	e.store = openStore(t, t.TempDir(), 1<<30)
	return e
}

func openStore(t testing.TB, dir string, limit int64, opts ...StoreOption) *Store {
	t.Helper()
	s, err := OpenStore(context.Background(), dir, limit, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// open opens the env's image with fast retries.
func (e *env) open(opts ...Option) *Image {
	e.t.Helper()
	fast := WithFetchOptions(WithBackoff(Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Factor: 2}))
	// No background fetch, metadata's included, and no fault-around (it
	// sizes fetches by a link measured here on loopback) unless a test
	// asks for it: most count bytes and requests.
	im, err := Open(context.Background(), e.art, e.store, append([]Option{fast, WithReadTimeout(20 * time.Second), WithBackgroundRate(0), WithMetadataFirst(false), WithFaultAround(0)}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { im.Close() })
	return im
}

// read reads n bytes at off and checks them against the exported image.
func (e *env) read(im *Image, off, n int64) {
	e.t.Helper()
	got := make([]byte, n)
	m, err := im.ReadAt(got, off)
	if err != nil && !(err == io.EOF && off+n >= int64(len(e.f.want))) {
		e.t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
	}
	if want := e.f.want[off : off+int64(m)]; !bytes.Equal(got[:m], want) {
		e.t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", n, off)
	}
}

// storedChunk returns the index of the k-th non-zero chunk.
func (f *fixture) storedChunk(t *testing.T, k int) int {
	t.Helper()
	for i, c := range f.art.Index.Chunks {
		if !c.Zero() {
			if k == 0 {
				return i
			}
			k--
		}
	}
	t.Fatal("not enough non-zero chunks")
	return 0
}

// faultHandler sits in front of the registry. Counters and faults concern
// GETs of the data blob unless said otherwise; a fault count of -1 means
// every time.
type faultHandler struct {
	next     http.Handler
	blobPath string

	mu          sync.Mutex
	blobGets    int
	ranges      []string // Range headers of data blob GETs, in order
	drop        int      // close the connection of the next requests (any path)
	status503   int
	flip        int
	truncate    int
	ignoreRange bool
	redirectTo  string        // answer blob GETs with a redirect to this URL
	delay       time.Duration // before answering blob GETs
	stall       int           // hang the next blob GETs until the client gives up
	// bearer auth: every /v2/ request needs "Bearer token"; /token hands it
	// out for user:pass.
	auth       bool
	tokenCalls int
}

func (h *faultHandler) set(f func(h *faultHandler)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

func (h *faultHandler) counts() (gets int, ranges []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.blobGets, append([]string(nil), h.ranges...)
}

func take(n *int) bool {
	switch {
	case *n < 0:
		return true
	case *n > 0:
		*n--
		return true
	}
	return false
}

func (h *faultHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if take(&h.drop) {
		h.mu.Unlock()
		hijackClose(w)
		return
	}
	if h.auth {
		if r.URL.Path == "/token" {
			h.tokenCalls++
			h.mu.Unlock()
			if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "pass" {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			io.WriteString(w, `{"token":"token"}`)
			return
		}
		if r.Header.Get("Authorization") != "Bearer token" {
			h.mu.Unlock()
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	if r.Method != http.MethodGet || r.URL.Path != h.blobPath {
		h.mu.Unlock()
		h.next.ServeHTTP(w, r)
		return
	}
	h.blobGets++
	h.ranges = append(h.ranges, r.Header.Get("Range"))
	fail503, flip, truncate, stall := take(&h.status503), take(&h.flip), take(&h.truncate), take(&h.stall)
	ignoreRange, redirect, delay := h.ignoreRange, h.redirectTo, h.delay
	h.mu.Unlock()
	time.Sleep(delay)
	if stall {
		<-r.Context().Done()
		return
	}
	switch {
	case fail503:
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	case redirect != "":
		http.Redirect(w, r, redirect, http.StatusTemporaryRedirect)
		return
	case ignoreRange:
		r.Header.Del("Range")
	}
	rec := httptest.NewRecorder()
	h.next.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	if flip && len(body) > 0 {
		body[len(body)/2] ^= 0x10
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(rec.Code)
	if truncate {
		body = body[:len(body)/2] // the server closes the connection: a short body
	}
	w.Write(body)
}

func hijackClose(w http.ResponseWriter) {
	if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
		c.Close()
	}
}

// storageServer serves the data blob like blob storage a registry
// redirects to, recording whether requests carried credentials.
type storageServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests int
	authSeen bool
}

func newStorageServer(t *testing.T, blob []byte) *storageServer {
	s := &storageServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests++
		if r.Header.Get("Authorization") != "" {
			s.authSeen = true
		}
		s.mu.Unlock()
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(blob))
	}))
	t.Cleanup(s.Close)
	return s
}

// staticKeychain hands out one authenticator for every registry.
type staticKeychain struct{ auth authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

func itoa(n int64) string { return fmt.Sprint(n) }
