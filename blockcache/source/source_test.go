package source

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/test/testutil"
)

// exports is an Exporter that records what is published.
type exports struct {
	mu      sync.Mutex
	live    map[string]*blockcache.Image
	added   int
	removed int
}

func (e *exports) Add(name, description string, im *blockcache.Image) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.live[name]; ok {
		return errors.New("duplicate export " + name)
	}
	e.live[name] = im
	e.added++
	return nil
}

func (e *exports) Remove(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.live, name)
	e.removed++
	return nil
}

// env is a registry holding a converted image ("app") and an unconverted
// one ("plain").
type env struct {
	t        *testing.T
	srv      *httptest.Server
	host     string
	app      Request // by manifest digest
	plain    Request
	store    *blockcache.Store
	saveDir  string
	exporter *exports
	key      *signature.PrivateKey // signed app's artifact
	pub      *signature.PublicKey
}

func writeKeys(t *testing.T, name string, priv, pub []byte) *signature.PrivateKey {
	t.Helper()
	t.Setenv(signature.PasswordEnv, "")
	p := filepath.Join(t.TempDir(), name+".key")
	if err := os.WriteFile(p, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := signature.LoadPrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func loadPublic(t *testing.T, pub []byte) *signature.PublicKey {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key.pub")
	if err := os.WriteFile(p, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := signature.LoadPublicKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	srv := httptest.NewServer(testutil.NewRegistry())
	t.Cleanup(srv.Close)
	e := &env{t: t, srv: srv, host: srv.Listener.Addr().String(), saveDir: t.TempDir(), exporter: &exports{live: map[string]*blockcache.Image{}}}
	push := func(repo string, files testutil.LayerSpec) Request {
		blob := testutil.LayerBlob(t, files)
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil })
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(empty.Image, l)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(e.host+"/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return Request{Image: ref.String(), ManifestDigest: d.String()}
	}
	e.app = push("app", testutil.LayerSpec{"etc/": "", "etc/hello": "hello\n"})
	e.plain = push("plain", testutil.LayerSpec{"etc/": "", "etc/plain": "plain\n"})
	priv, pub, err := signature.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e.key = writeKeys(t, "ci", priv, pub)
	e.pub = loadPublic(t, pub)
	if _, err := imageconv.Convert(ctx, e.app.Image, imageconv.WithPlainHTTP(), imageconv.WithWorkDir(t.TempDir()),
		imageconv.WithChunkSize(64<<10), imageconv.WithSignKey(e.key)); err != nil {
		t.Fatal(err)
	}
	store, err := blockcache.OpenStore(ctx, t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e.store = store
	return e
}

func (e *env) source(opts ...Option) *Source {
	opts = append([]Option{WithPlainHTTP(e.host), WithSaveDir(e.saveDir), WithImageOptions(blockcache.WithBackgroundRate(0))}, opts...)
	return New(context.Background(), e.store, e.exporter, opts...)
}

func (e *env) savedFiles() int {
	files, _ := filepath.Glob(filepath.Join(e.saveDir, "*.json"))
	return len(files)
}

// TestOpenShares: two requests for one image share an export; the last
// Close withdraws it and forgets the saved artifact; the totals keep the
// closed image's counters.
func TestOpenShares(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	src := e.source()
	h1, err := src.Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := src.Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	if h1.Name() != h2.Name() || h1.Name() != h1.Artifact().Descriptor.Digest.String() {
		t.Errorf("exports %q and %q, want both named by the artifact digest %s", h1.Name(), h2.Name(), h1.Artifact().Descriptor.Digest)
	}
	if e.exporter.added != 1 || e.savedFiles() != 1 {
		t.Fatalf("%d exports added, %d artifacts saved; want 1 and 1", e.exporter.added, e.savedFiles())
	}
	buf := make([]byte, 4096)
	if _, err := h1.Image().ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if live, _ := src.Images(); len(live) != 1 || live[0].Image != e.app.Image {
		t.Errorf("Images() = %+v, want the one image", live)
	}
	if err := h1.Close(); err != nil || e.exporter.removed != 0 {
		t.Fatalf("first Close: %v, %d removed; want the export kept", err, e.exporter.removed)
	}
	h1.Close() // twice is a no-op
	if err := h2.Close(); err != nil || e.exporter.removed != 1 || e.savedFiles() != 0 {
		t.Fatalf("last Close: %v, %d removed, %d saved; want the export and the saved artifact gone", err, e.exporter.removed, e.savedFiles())
	}
	live, retired := src.Images()
	if len(live) != 0 || retired.Reads == 0 || retired.BytesFetched == 0 {
		t.Errorf("after Close: %d live, retired %+v; want the read counted", len(live), retired)
	}
	named, err := src.Open(ctx, Request{Image: e.app.Image, Export: "mine"})
	if err != nil || named.Name() != "mine" {
		t.Fatalf("Open by tag with an export name: %v", err)
	}
	named.Close()
}

// TestOpenRegistryDown: an image whose artifact was saved by a process
// that stopped (Shutdown) opens in the next one with the registry down;
// another does not, and says the registry is unreachable.
func TestOpenRegistryDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.source()
	h, err := first.Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	first.Shutdown()
	h.Close()
	if e.savedFiles() != 1 {
		t.Fatalf("%d saved artifacts after Shutdown, want 1", e.savedFiles())
	}
	e.srv.Close()

	next := e.source()
	h, err = next.Open(ctx, e.app)
	if err != nil {
		t.Fatalf("Open with the registry down and the artifact saved: %v", err)
	}
	h.Close()
	_, err = next.Open(ctx, e.plain)
	if !errors.Is(err, artifact.ErrRegistryUnreachable) || Reason(err) != ReasonUnreachable {
		t.Errorf("Open of an unsaved image with the registry down: %v (reason %q)", err, Reason(err))
	}
	var rerr *artifact.RegistryError
	if !errors.As(err, &rerr) || rerr.Registry != e.host {
		t.Errorf("the error does not name the registry %s: %v", e.host, err)
	}
}

// TestOpenErrors: each failure has its reason, and nothing is left
// exported or saved.
func TestOpenErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	src := e.source()
	for _, tc := range []struct {
		req    Request
		reason string
		is     error
	}{
		{e.plain, ReasonNoArtifact, artifact.ErrNoArtifact},
		{Request{Image: "UPPER/case:v1"}, ReasonBadReference, ErrBadReference},
	} {
		_, err := src.Open(ctx, tc.req)
		if !errors.Is(err, tc.is) || Reason(err) != tc.reason {
			t.Errorf("%s: %v (reason %q), want %q", tc.req, err, Reason(err), tc.reason)
		}
	}
	if e.exporter.added != 0 || e.savedFiles() != 0 {
		t.Errorf("%d exports, %d saved artifacts left by failures", e.exporter.added, e.savedFiles())
	}
	if _, err := os.Stat(e.saveDir); err != nil {
		t.Fatal(err)
	}
}

// TestSavedVerdict: an image opened under policy signed and saved keeps
// its verdict: with the registry down, a process trusting the same key
// opens it from what was saved, one trusting another key refuses it
// (counted), and one without a verifier opens it.
func TestSavedVerdict(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v, err := signature.NewVerifier(e.pub)
	if err != nil {
		t.Fatal(err)
	}
	first := e.source(WithVerifier(v))
	h, err := first.Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Artifact().Verdict; got.Policy != signature.PolicySigned || got.Key != e.pub.ID() {
		t.Fatalf("verdict %+v, want signed by %s", got, e.pub.ID())
	}
	first.Shutdown()
	h.Close()
	e.srv.Close()

	second := e.source(WithVerifier(v))
	h, err = second.Open(ctx, e.app)
	if err != nil {
		t.Fatalf("same key, registry down: %v", err)
	}
	second.Shutdown() // keeps the saved artifact for the next ones
	h.Close()
	_, otherPub, _ := signature.GenerateKey(nil)
	other, _ := signature.NewVerifier(loadPublic(t, otherPub))
	strict := e.source(WithVerifier(other))
	_, err = strict.Open(ctx, e.app)
	if !errors.Is(err, artifact.ErrUntrusted) || Reason(err) != ReasonUntrusted {
		t.Errorf("another key, registry down: %v (reason %q), want the saved artifact refused", err, Reason(err))
	}
	if n := strict.Rejected()["untrusted"]; n != 1 {
		t.Errorf("rejections counted: %v", strict.Rejected())
	}
	h, err = e.source().Open(ctx, e.app)
	if err != nil {
		t.Fatalf("no verifier, registry down: %v", err)
	}
	h.Close()
}

// TestUnsignedRefusedUnderSigned: under a verifier, the unsigned image
// (here, one with a grafted-on unsigned artifact) is refused and the
// rejection counted by reason.
func TestUnsignedRefusedUnderSigned(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := imageconv.Convert(ctx, e.plain.Image, imageconv.WithPlainHTTP(), imageconv.WithWorkDir(t.TempDir())); err != nil {
		t.Fatal(err)
	}
	v, _ := signature.NewVerifier(e.pub)
	src := e.source(WithVerifier(v))
	_, err := src.Open(ctx, e.plain)
	if !errors.Is(err, artifact.ErrUntrusted) || Reason(err) != ReasonUntrusted {
		t.Fatalf("unsigned image under a verifier: %v (reason %q)", err, Reason(err))
	}
	if n := src.Rejected()["unsigned"]; n != 1 {
		t.Errorf("rejections counted: %v, want one unsigned", src.Rejected())
	}
	if e.savedFiles() != 0 || e.exporter.added != 0 {
		t.Error("a refused image was exported or saved")
	}
}

// TestStreamMinSize: under WithStreamMinSize an image whose flattened
// size is under the bound is not opened (ReasonSmall, nothing exported or
// saved, no conversion asked for); one at the bound is, and 0 opens all.
func TestStreamMinSize(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	h, err := e.source().Open(ctx, e.app)
	if err != nil {
		t.Fatal(err)
	}
	size := h.Artifact().Index.ImageSize
	h.Close()
	conv := &requests{}
	_, err = e.source(WithStreamMinSize(size+1), WithConvertRequests(conv)).Open(ctx, e.app)
	if !errors.Is(err, artifact.ErrSmallImage) || Reason(err) != ReasonSmall {
		t.Fatalf("image of %d bytes under a bound of %d: %v (reason %q), want %q", size, size+1, err, Reason(err), ReasonSmall)
	}
	if e.exporter.added != 1 || e.savedFiles() != 0 || len(conv.images) != 0 {
		t.Errorf("a small image left %d exports, %d saved artifacts, conversion requests %v", e.exporter.added-1, e.savedFiles(), conv.images)
	}
	for _, min := range []int64{size, 0} {
		h, err := e.source(WithStreamMinSize(min)).Open(ctx, e.app)
		if err != nil {
			t.Fatalf("image of %d bytes, bound %d: %v", size, min, err)
		}
		h.Close()
	}
}
