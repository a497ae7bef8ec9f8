package blockcache

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/test/testutil"
)

// nsRecorder notes the ns= query of the requests it passes on.
type nsRecorder struct {
	next http.Handler
	mu   sync.Mutex
	ns   map[string]bool
}

func (r *nsRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	if r.ns == nil {
		r.ns = map[string]bool{}
	}
	r.ns[req.URL.Query().Get("ns")] = true
	r.mu.Unlock()
	r.next.ServeHTTP(w, req)
}

// closedPort returns a 127.0.0.1 address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// hostsFor writes a hosts.toml for the env's registry and returns its
// hosts.
func (e *env) hostsFor(t *testing.T, toml string) []registryhosts.Host {
	t.Helper()
	root := t.TempDir()
	reg := e.art.Repo.Registry
	dir := filepath.Join(root, strings.Replace(reg.RegistryStr(), ":", "_", 1)+"_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts, err := registryhosts.New(root).Hosts(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	return hosts
}

// Mirrors are asked in order; one that is down, one that answers 404 and
// one that cuts its body short each pass the request on to the next host,
// and no read fails. A host without the pull capability is never asked
// for blobs.
func TestMirrorFallback(t *testing.T) {
	e := newEnv(t)
	down := closedPort(t)
	missing := testutil.Registry(t) // an empty registry: 404 for the blob
	resolveOnly := &faultHandler{next: e.f.reg, blobPath: e.faults.blobPath}
	good := &faultHandler{next: e.f.reg, blobPath: e.faults.blobPath}
	goodNS := &nsRecorder{next: good}
	hosts := e.hostsFor(t, `
[host."http://`+testutil.Serve(t, resolveOnly)+`"]
  capabilities = ["resolve"]
[host."http://`+down+`"]
  capabilities = ["pull", "resolve"]
[host."http://`+missing+`"]
  capabilities = ["pull", "resolve"]
[host."http://`+testutil.Serve(t, goodNS)+`"]
  capabilities = ["pull"]
`)
	// Reads of chunks one after another: no readahead, each is its own fetch.
	im := e.open(WithFetchOptions(WithHosts(hosts)), WithReadahead(0))
	originGets := func() int { n, _ := e.faults.counts(); return n }
	goodGets := func() int { n, _ := good.counts(); return n }

	// The down mirror and the 404 fall through to the good mirror.
	off, n := e.chunkRange(e.f.storedChunk(t, 0))
	e.read(im, off, n)
	s := im.Stats().Fetcher
	if s.MirrorAnswers != 1 || s.MirrorFallbacks != 2 || goodGets() != 1 || originGets() != 0 {
		t.Fatalf("first read: %d mirror answers, %d fallbacks, %d GETs at the good mirror, %d at the origin; want 1, 2, 1, 0",
			s.MirrorAnswers, s.MirrorFallbacks, goodGets(), originGets())
	}
	if !goodNS.ns[e.art.Repo.RegistryStr()] {
		t.Errorf("the mirror's requests carried ns=%v, want the registry's name %s", goodNS.ns, e.art.Repo.RegistryStr())
	}

	// The down mirror is skipped for a while; the 404 one is asked again.
	off, n = e.chunkRange(e.f.storedChunk(t, 1))
	e.read(im, off, n)
	if s := im.Stats().Fetcher; s.MirrorAnswers != 2 || s.MirrorFallbacks != 3 {
		t.Fatalf("second read: %d mirror answers, %d fallbacks; want 2, 3", s.MirrorAnswers, s.MirrorFallbacks)
	}

	// A short body from the good mirror: the rest comes from the origin.
	good.set(func(h *faultHandler) { h.truncate = 1 })
	off, n = e.chunkRange(e.f.storedChunk(t, 2))
	e.read(im, off, n)
	if originGets() != 1 {
		t.Fatalf("after a mirror cut its body short: %d GETs at the origin, want 1", originGets())
	}

	// Every mirror that can pull now fails (the good one cools down after
	// its short body): the origin answers.
	off, n = e.chunkRange(e.f.storedChunk(t, 3))
	e.read(im, off, n)
	if originGets() != 2 {
		t.Fatalf("with no mirror left: %d GETs at the origin, want 2", originGets())
	}
	if n, _ := resolveOnly.counts(); n != 0 {
		t.Errorf("a host without the pull capability was asked for the blob %d times", n)
	}
	if s := im.Stats(); s.ReadErrors != 0 {
		t.Errorf("%d read errors", s.ReadErrors)
	}
}

// Without hosts (no hosts.toml for the registry), the fetcher asks the
// registry alone, as before.
func TestNoHostsAsksTheRegistry(t *testing.T) {
	e := newEnv(t)
	im := e.open(WithFetchOptions(WithHosts(nil)))
	off, n := e.chunkRange(e.f.storedChunk(t, 0))
	e.read(im, off, n)
	if gets, _ := e.faults.counts(); gets != 1 {
		t.Fatalf("%d GETs at the registry, want 1", gets)
	}
	if s := im.Stats().Fetcher; s.MirrorAnswers != 0 || s.MirrorFallbacks != 0 {
		t.Errorf("mirror counters without mirrors: %+v", s)
	}
}

// registryOnly hands out credentials for one registry only.
type registryOnly struct {
	registry string
	auth     authn.Authenticator
}

func (k registryOnly) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.registry {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// A mirror gets the credentials resolved for its own host, never the
// registry's.
func TestMirrorGetsNoRegistryCredentials(t *testing.T) {
	e := newEnv(t)
	var sawAuth atomic.Bool
	mirror := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			sawAuth.Store(true)
		}
		e.f.reg.ServeHTTP(w, r)
	}))
	hosts := e.hostsFor(t, `[host."http://`+mirror+`"]`+"\n")
	kc := registryOnly{registry: e.art.Repo.RegistryStr(), auth: &authn.Basic{Username: "user", Password: "pass"}}
	im := e.open(WithFetchOptions(WithHosts(hosts), WithKeychain(kc)))
	off, n := e.chunkRange(e.f.storedChunk(t, 0))
	e.read(im, off, n)
	if s := im.Stats().Fetcher; s.MirrorAnswers != 1 || sawAuth.Load() {
		t.Errorf("mirror answers %d, mirror saw credentials: %t; want 1, false", s.MirrorAnswers, sawAuth.Load())
	}
}

// A mirror that answers a range with the whole blob (a pull-through cache
// filling it from upstream) serves that request; the next ones go around
// it while the fill wait lasts, and to it again after.
func TestMirrorStreamingWholeBlob(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wait      time.Duration
		mirror    int // blob GETs at the mirror after two reads
		originGet int
	}{
		{"within the wait", time.Hour, 1, 1},
		{"after the wait", 0, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			filling := &faultHandler{next: e.f.reg, blobPath: e.faults.blobPath, ignoreRange: true}
			hosts := e.hostsFor(t, `[host."http://`+testutil.Serve(t, filling)+`"]`+"\n")
			wait := func(c *fetchConfig) { c.fillWait = tc.wait }
			im := e.open(WithFetchOptions(WithHosts(hosts), wait))
			for k := range 2 {
				off, n := e.chunkRange(e.f.storedChunk(t, k))
				e.read(im, off, n)
			}
			mirrorGets, _ := filling.counts()
			originGets, _ := e.faults.counts()
			if mirrorGets != tc.mirror || originGets != tc.originGet {
				t.Errorf("%d GETs at the mirror, %d at the origin; want %d, %d", mirrorGets, originGets, tc.mirror, tc.originGet)
			}
			if s := im.Stats().Fetcher; s.MirrorFallbacks != 0 {
				t.Errorf("%d mirror fallbacks counted, want none (going around a filling mirror is not a failure)", s.MirrorFallbacks)
			}
		})
	}
}

// Requests that come while a mirror's first request is unanswered wait
// for its answer: a mirror that streams the whole blob (a filling cache)
// gets that one request alone, the others go to the origin; a mirror that
// answers the range gets them all.
func TestMirrorProbedFirst(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		filling                bool
		mirrorGets, originGets int
	}{
		{"filling cache", true, 1, 3},
		{"cache holding the blob", false, 4, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			// The first answer comes late: the other requests are sent
			// meanwhile.
			mirror := &faultHandler{next: e.f.reg, blobPath: e.faults.blobPath, ignoreRange: tc.filling, delay: 100 * time.Millisecond}
			hosts := e.hostsFor(t, `[host."http://`+testutil.Serve(t, mirror)+`"]`+"\n")
			f := NewRangeFetcher(e.art.Repo, e.art.Data, WithHosts(hosts), func(c *fetchConfig) { c.fillWait = time.Hour })
			var wg sync.WaitGroup
			for k := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					off := int64(k) * 1000
					b, err := f.FetchRange(context.Background(), off, 100)
					if err != nil || string(b) != string(e.f.blob[off:off+100]) {
						t.Errorf("range at %d: %v, or wrong bytes", off, err)
					}
				}()
			}
			wg.Wait()
			mirrorGets, _ := mirror.counts()
			originGets, _ := e.faults.counts()
			if mirrorGets != tc.mirrorGets || originGets != tc.originGets {
				t.Errorf("%d GETs at the mirror, %d at the origin; want %d, %d", mirrorGets, originGets, tc.mirrorGets, tc.originGets)
			}
		})
	}
}

// A mirror that serves wrong bytes costs a refetch, not a read: the chunk
// that fails verification is fetched again from the registry itself, past
// the mirror, and the read gets the right bytes.
func TestMirrorServingWrongBytes(t *testing.T) {
	e := newEnv(t)
	bad := &faultHandler{next: e.f.reg, blobPath: e.faults.blobPath, flip: -1}
	hosts := e.hostsFor(t, `
[host."http://`+testutil.Serve(t, bad)+`"]
  capabilities = ["pull"]
`)
	im := e.open(WithFetchOptions(WithHosts(hosts)))
	off, n := e.chunkRange(e.f.storedChunk(t, 0))
	e.read(im, off, n) // fails on wrong bytes
	badGets, _ := bad.counts()
	originGets, _ := e.faults.counts()
	if badGets != 1 || originGets != 1 {
		t.Errorf("%d GETs at the mirror, %d at the registry; want 1 and 1 (the refetch past the mirror)", badGets, originGets)
	}
	if s := im.Stats(); s.ReadErrors != 0 || s.CorruptChunks == 0 {
		t.Errorf("%d read errors, %d corrupt fetches counted; want 0 and at least 1", s.ReadErrors, s.CorruptChunks)
	}
}
