package convertsvc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// holdProxy forwards requests to a registry, except the one its trap
// matches: that one is held, never answered, and announced on held, so
// that the test knows where the client is when it kills it.
type holdProxy struct {
	addr string
	rp   *httputil.ReverseProxy
	mu   sync.Mutex
	trap func(r *http.Request, body []byte) bool
	held chan string
}

func newHoldProxy(t *testing.T, registry string) *holdProxy {
	t.Helper()
	target, _ := url.Parse("http://" + registry)
	p := &holdProxy{rp: httputil.NewSingleHostReverseProxy(target), held: make(chan string, 1)}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	p.addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// setTrap holds the next request trap matches (nil: none).
func (p *holdProxy) setTrap(trap func(r *http.Request, body []byte) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trap = trap
}

func (p *holdProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
	p.mu.Lock()
	trap := p.trap
	if trap != nil && trap(r, body) {
		p.trap = nil
	} else {
		trap = nil
	}
	p.mu.Unlock()
	if trap != nil {
		p.held <- r.Method + " " + r.URL.Path
		<-r.Context().Done() // until the client is killed
		return
	}
	p.rp.ServeHTTP(w, r)
}

// waitHeld waits for the trapped request.
func (p *holdProxy) waitHeld(t *testing.T, s *service, what string) string {
	t.Helper()
	select {
	case req := <-p.held:
		return req
	case <-time.After(2 * time.Minute):
		t.Fatalf("the service never sent %s:\n%s", what, s.logTail(20))
	}
	return ""
}

// visibility checks, while it runs, that every manifest the registry lists
// as a referrer of the image (and of its artifacts) is whole: the manifest
// is there, its blobs are, and an artifact's index parses.
type visibility struct {
	repo    name.Repository
	subject v1.Hash
	mu      sync.Mutex
	polls   int
	seen    map[string]bool // manifests listed, by digest
	broken  []string
}

func (v *visibility) run(ctx context.Context) {
	for ctx.Err() == nil {
		v.check(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (v *visibility) check(ctx context.Context) {
	ropts := []remote.Option{remote.WithContext(ctx)}
	subjects := []v1.Hash{v.subject}
	for i := 0; i < len(subjects); i++ {
		idx, err := remote.Referrers(v.repo.Digest(subjects[i].String()), ropts...)
		if err != nil {
			v.fail(ctx, "listing referrers of %s: %v", subjects[i], err)
			return
		}
		im, err := idx.IndexManifest()
		if err != nil {
			v.fail(ctx, "referrers index of %s: %v", subjects[i], err)
			return
		}
		for _, d := range im.Manifests {
			v.mu.Lock()
			v.seen[d.Digest.String()] = true
			v.mu.Unlock()
			if d.ArtifactType == artifact.ArtifactType {
				subjects = append(subjects, d.Digest)
			}
			v.whole(ctx, d)
		}
	}
	v.mu.Lock()
	v.polls++
	v.mu.Unlock()
}

// whole checks one listed manifest.
func (v *visibility) whole(ctx context.Context, d v1.Descriptor) {
	ropts := []remote.Option{remote.WithContext(ctx)}
	got, err := remote.Get(v.repo.Digest(d.Digest.String()), ropts...)
	if err != nil {
		v.fail(ctx, "listed manifest %s (%s): %v", d.Digest, d.ArtifactType, err)
		return
	}
	m, err := v1.ParseManifest(bytes.NewReader(got.Manifest))
	if err != nil {
		v.fail(ctx, "listed manifest %s: %v", d.Digest, err)
		return
	}
	for _, l := range append(m.Layers, m.Config) {
		if err := v.blobThere(ctx, l.Digest); err != nil {
			v.fail(ctx, "blob %s of listed manifest %s: %v", l.Digest, d.Digest, err)
			continue
		}
		if l.MediaType != artifact.IndexMediaType {
			continue
		}
		layer, err := remote.Layer(v.repo.Digest(l.Digest.String()), ropts...)
		if err == nil {
			var rc io.ReadCloser
			if rc, err = layer.Compressed(); err == nil {
				var b []byte
				b, err = io.ReadAll(rc)
				rc.Close()
				if err == nil {
					_, err = artifact.ParseIndex(b)
				}
			}
		}
		if err != nil {
			v.fail(ctx, "index blob %s of artifact %s: %v", l.Digest, d.Digest, err)
		}
	}
}

// blobThere asks the registry whether it holds blob d.
func (v *visibility) blobThere(ctx context.Context, d v1.Hash) error {
	u := fmt.Sprintf("http://%s/v2/%s/blobs/%s", v.repo.RegistryStr(), v.repo.RepositoryStr(), d)
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HEAD %s: %s", u, resp.Status)
	}
	return nil
}

func (v *visibility) fail(ctx context.Context, format string, args ...any) {
	if ctx.Err() != nil {
		return // the poll was cut short, not the registry
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.broken = append(v.broken, fmt.Sprintf(format, args...))
}

// TestCrashMidConversion: the service is killed (SIGKILL) three times
// while it converts one image, each time while a request the test chose
// is in flight: downloading the image's layer, pushing the artifact
// manifest (its blobs pushed), pushing the signature (the artifact
// pushed). Each restart takes the job up again; the last one finishes it,
// signed. All along, every manifest the registry lists for the image is
// whole, and nothing is listed before its artifact manifest is complete;
// the job's files are gone at the end.
func TestCrashMidConversion(t *testing.T) {
	e := getEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ti := newImage(t, t.TempDir(), "crash-app", 3<<20)
	if err := skopeoPush(ctx, ti, e.plain.Addr+"/crash/app:v1"); err != nil {
		t.Fatal(err)
	}
	proxy := newHoldProxy(t, e.plain.Addr)
	svc, err := e.startService(filepath.Join(t.TempDir(), "service"), "--repos", "crash/**")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.stop()
		if t.Failed() {
			t.Logf("service log:\n%s", svc.logTail(60))
		}
	})

	repo, err := name.NewRepository(e.plain.Addr+"/crash/app", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	subject, _ := v1.NewHash(ti.digest)
	vis := &visibility{repo: repo, subject: subject, seen: map[string]bool{}}
	visCtx, stopVis := context.WithCancel(ctx)
	visDone := make(chan struct{})
	go func() { vis.run(visCtx); close(visDone) }()

	layer, err := ti.img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layerDigest, _ := layer[0].Digest()
	phases := []struct {
		what string
		trap func(r *http.Request, body []byte) bool
		// listed is how many manifests may be listed when it is killed.
		listed int
	}{
		{"the layer download", func(r *http.Request, _ []byte) bool {
			return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layerDigest.String())
		}, 0},
		{"the artifact manifest", func(r *http.Request, body []byte) bool {
			return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/sha256:") &&
				bytes.Contains(body, []byte(artifact.ArtifactType)) && !bytes.Contains(body, []byte(signature.BundleMediaType))
		}, 0},
		{"the signature manifest", func(r *http.Request, body []byte) bool {
			return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/sha256:") && bytes.Contains(body, []byte(signature.BundleMediaType))
		}, 1},
	}
	image := proxy.addr + "/crash/app@" + ti.digest
	for i, ph := range phases {
		start := time.Now()
		proxy.setTrap(ph.trap)
		if i == 0 {
			if code, body := svc.request(t, image); code != http.StatusAccepted {
				t.Fatalf("/convert: %d %s", code, body)
			}
		} else if err := svc.start(); err != nil { // the job is taken up again at start
			t.Fatal(err)
		}
		req := proxy.waitHeld(t, svc, ph.what)
		jobs, _ := filepath.Glob(filepath.Join(svc.state, "queue", "*.json"))
		work, _ := filepath.Glob(filepath.Join(svc.work, "sluice-convert-service", "*", "sluice-convert-*"))
		svc.kill()
		t.Logf("killed during %s (%s held %v after the start); %d job file(s) queued, work files %q",
			ph.what, req, time.Since(start).Round(time.Millisecond), len(jobs), work)
		if len(jobs) != 1 {
			t.Fatalf("%d job files in the state dir during the conversion, want 1", len(jobs))
		}
		if i == 0 && len(work) == 0 {
			t.Errorf("no conversion work dir while the layer downloads")
		}
		vis.check(ctx)
		vis.mu.Lock()
		listed := len(vis.seen)
		vis.mu.Unlock()
		if listed != ph.listed {
			t.Errorf("after the kill during %s, %d manifests were ever listed for the image, want %d", ph.what, listed, ph.listed)
		}
		if out, err := e.inspectSigned(ctx, e.plain.Addr+"/crash/app:v1"); err == nil {
			t.Errorf("a signed artifact after the kill during %s:\n%s", ph.what, out)
		}
		for _, w := range work {
			defer func() {
				if _, err := os.Stat(w); err == nil {
					t.Errorf("%s, left by the kill during %s, is still there", w, ph.what)
				}
			}()
		}
	}

	if err := svc.start(); err != nil {
		t.Fatal(err)
	}
	took, out := e.waitConverted(t, e.plain.Addr+"/crash/app:v1", 2*time.Minute)
	svc.idle(t, time.Minute)
	t.Logf("after the last restart, signed within %v:\n%s", took.Round(time.Millisecond), out)
	stopVis()
	<-visDone
	vis.check(ctx)
	vis.mu.Lock()
	defer vis.mu.Unlock()
	if len(vis.broken) > 0 {
		t.Errorf("a partial artifact was visible (%d polls):\n%s", vis.polls, strings.Join(vis.broken, "\n"))
	}
	// The artifact and its signature, listed; the one artifact pushed
	// again by the last run has the same digest (conversion is
	// deterministic), so nothing else.
	if len(vis.seen) != 2 {
		t.Errorf("%d manifests listed for the image, want its artifact and the signature", len(vis.seen))
	}
	t.Logf("%d polls of the referrers saw only whole artifacts", vis.polls)
	if jobs, _ := filepath.Glob(filepath.Join(svc.state, "queue", "*")); len(jobs) != 0 {
		t.Errorf("the state dir still holds %q", jobs)
	}
	if n := len(svc.entries("converted")); n != 1 {
		t.Errorf("%d conversions logged over the runs, want the last run's one", n)
	}
	svc.checkRaces(t)
}
