//go:build fleetvalidate

package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/bench/fleet/model"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/testutil"
)

// fleetNodes is the fleet measured against the model.
const fleetNodes = 8

// TestPredictsEightNodes checks the model against real nodes: `sluice
// serve` processes (each its own cache dir and socket) reading a whole
// image with nbdcopy through one docker-registry pull-through cache.
//
//  1. A first node fills a cache; a second one, behind that warm cache,
//     is the trace: its requests (recorded by a proxy in front of the
//     cache, with their ranges and times) and the origin requests it
//     still caused (its lookups' origin-only ones).
//  2. The origin's bandwidth is measured with one GET of the data blob.
//  3. Eight nodes start at once behind a fresh cache; the origin's access
//     log gives their real origin bytes and requests (blob GETs, and the
//     rest but /v2/ pings and blob HEADs, which the model leaves out).
//
// The model's prediction for eight nodes must be within 20% of both
// (issue 17's acceptance). It is not yet. Runs on 2026-12-06, eight
// nodes at once through a cold cache (the data blob is 12,584,822 bytes;
// the same nodes without the cache cost the origin 100,716,504 bytes in
// 440 requests):
//   - before blockcache held requests behind a mirror's first one:
//     391,725,971 bytes in 148 requests and 355,460,705 in 264 (the cache
//     streamed the blob from the origin for each request in flight);
//   - after: 199,820,161 bytes in 339 requests (with a -race build
//     loading the machine), then 127,715,684 in 209; the model predicted
//     213,973,542 in 434 for the latter.
//
// The model counts each streamed copy whole and each node's ranges from
// the origin for all of FillWait; nodes hang up on streamed copies early,
// and under load their requests come later than their trace's.
// Hence the build tag: go test -tags fleetvalidate ./test/fleet/.
// FLEET_TRACE=FILE keeps the trace for `go run ./bench/fleet -trace FILE`.
func TestPredictsEightNodes(t *testing.T) {
	testutil.Require(t, testutil.Tool(debregistry.Binary, "nbdcopy", "go"))
	ctx := context.Background()
	dir := t.TempDir()
	sluice := filepath.Join(dir, "sluice")
	if out, err := exec.Command("go", "build", "-o", sluice, "github.com/sluice-project/sluice/cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("building sluice: %v\n%s", err, out)
	}
	origin := start(t, filepath.Join(dir, "origin"), debregistry.WithAccessLog())
	image := origin.Addr + "/fleet/app:v1"
	ref, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(3<<20, 4) // four layers of 3 MiB of random bytes
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	if _, err := imageconv.Convert(ctx, image, imageconv.WithPlainHTTP(), imageconv.WithWorkDir(t.TempDir())); err != nil {
		t.Fatal(err)
	}

	// 1. The trace, behind a warm cache.
	warm := start(t, filepath.Join(dir, "cache-warm"), debregistry.WithProxy("http://"+origin.Addr))
	rec := &recorder{}
	rec.proxy = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: warm.Addr})
	recAddr := strings.TrimPrefix(testutil.Serve(t, rec), "http://")
	viaRec := hostsDir(t, origin.Addr, recAddr)
	runNodes(t, sluice, viaRec, image, 1) // fills the warm cache
	settle(t, origin, warm)
	mark := requests(t, origin)
	rec.reset()
	ready := runNodes(t, sluice, viaRec, image, 1)[0]
	tr := rec.trace(t, origin.Addr, ready)
	settle(t, origin, warm)
	after := requests(t, origin)
	onlyOrigin, onlyBytes := counted(after[len(mark):])
	tr.OriginOnly, tr.OriginOnlyBytes = onlyOrigin, onlyBytes
	if path := os.Getenv("FLEET_TRACE"); path != "" {
		b, _ := json.MarshalIndent(tr, "", " ")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// 2. The origin's bandwidth.
	bw := originBandwidth(t, origin.Addr, tr)

	// 3. Eight nodes at once behind a fresh cache.
	cold := start(t, filepath.Join(dir, "cache-cold"), debregistry.WithProxy("http://"+origin.Addr))
	mark = requests(t, origin)
	began := time.Now()
	runNodes(t, sluice, hostsDir(t, origin.Addr, cold.Addr), image, fleetNodes)
	elapsed := time.Since(began)
	settle(t, origin, cold)
	fleet := requests(t, origin)[len(mark):]
	reqs, bytes := counted(fleet)
	copies := map[string]int{}
	for _, q := range fleet {
		if _, d := q.Blob(); d != "" && q.Method == http.MethodGet {
			copies[d]++
		}
	}
	for d, n := range copies {
		t.Logf("origin: %d GETs of blob %s (%d bytes)", n, d, tr.Blobs[d])
	}

	p := model.Params{Nodes: fleetNodes, Spread: 0, OriginBandwidth: bw, CacheBandwidth: 1e12, NodeBandwidth: 1e12, P2PHit: 1, FillWait: 2}
	pred, err := model.Simulate(tr, model.PullThrough, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("trace: %d requests, %d origin-only (%d bytes), ready in %.2f s; origin %.0f MB/s", len(tr.Requests), tr.OriginOnly, tr.OriginOnlyBytes, tr.Ready, bw/1e6)
	t.Logf("%d nodes behind a cold cache (%.1f s): origin served %d bytes in %d requests; the model predicts %d bytes in %d requests",
		fleetNodes, elapsed.Seconds(), bytes, reqs, pred.OriginBytes, pred.OriginRequests)
	if off := relErr(float64(pred.OriginBytes), float64(bytes)); off > 0.2 {
		t.Errorf("predicted origin bytes %d are %.0f%% off the measured %d", pred.OriginBytes, 100*off, bytes)
	}
	if off := relErr(float64(pred.OriginRequests), float64(reqs)); off > 0.2 {
		t.Errorf("predicted origin requests %d are %.0f%% off the measured %d", pred.OriginRequests, 100*off, reqs)
	}
}

func relErr(pred, measured float64) float64 { return math.Abs(pred-measured) / math.Max(measured, 1) }

func start(t *testing.T, dir string, opts ...debregistry.Option) *debregistry.Registry {
	t.Helper()
	r, err := debregistry.Start(dir, append(opts, debregistry.WithAccessLog())...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

func requests(t *testing.T, r *debregistry.Registry) []debregistry.Request {
	t.Helper()
	reqs, err := r.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	return reqs
}

// counted is what the model counts of an access log: every request but
// /v2/ pings and blob HEADs, and their bytes.
func counted(reqs []debregistry.Request) (n int, bytes int64) {
	for _, q := range reqs {
		if _, d := q.Blob(); q.Path == "/v2/" || (d != "" && q.Method == http.MethodHead) {
			continue
		}
		n++
		bytes += q.Bytes
	}
	return n, bytes
}

// hostsDir writes a config_path sending registry's pulls and tags to
// mirror.
func hostsDir(t *testing.T, registry, mirror string) string {
	t.Helper()
	root := t.TempDir()
	d := filepath.Join(root, strings.Replace(registry, ":", "_", 1)+"_")
	os.MkdirAll(d, 0o755)
	if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(fmt.Sprintf("[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+mirror)), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// runNodes starts n `sluice serve` nodes at once, each reading the whole
// image with nbdcopy, and returns each one's time from its start until
// its read is done.
func runNodes(t *testing.T, sluice, hosts, image string, n int) []float64 {
	t.Helper()
	ready := make([]float64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := t.TempDir()
			sock := filepath.Join(d, "nbd.sock")
			begin := time.Now()
			cmd := exec.Command(sluice, "serve", "--plain-http", "--registry-config-path", hosts, "--socket", sock,
				"--cache-dir", filepath.Join(d, "cache"), "--background-rate", "0", image)
			logf, _ := os.Create(filepath.Join(d, "serve.log"))
			defer logf.Close()
			cmd.Stdout, cmd.Stderr = logf, logf
			p, err := proc.Start(cmd)
			if err != nil {
				t.Error(err)
				return
			}
			defer p.Stop(10 * time.Second)
			for {
				if _, err := os.Stat(sock); err == nil {
					break
				}
				select {
				case <-p.Done():
					t.Errorf("sluice serve exited: %s", proc.LogTail(filepath.Join(d, "serve.log"), 20))
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			if out, err := exec.Command("nbdcopy", "nbd+unix:///?socket="+sock, "null:").CombinedOutput(); err != nil {
				t.Errorf("nbdcopy: %v\n%s", err, out)
				return
			}
			ready[i] = time.Since(begin).Seconds()
		}()
	}
	wg.Wait()
	return ready
}

// recorder forwards to a cache and notes each blob GET.
type recorder struct {
	proxy *httputil.ReverseProxy
	mu    sync.Mutex
	t0    time.Time
	seen  []seenReq
}

type seenReq struct {
	path, rng string
	t         float64
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t0, r.seen = time.Now(), nil
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
		r.mu.Lock()
		r.seen = append(r.seen, seenReq{path: req.URL.Path, rng: req.Header.Get("Range"), t: time.Since(r.t0).Seconds()})
		r.mu.Unlock()
	}
	r.proxy.ServeHTTP(w, req)
}

// trace turns what the recorder saw into a model.Trace, sizing each blob
// with a HEAD at the origin.
func (r *recorder) trace(t *testing.T, origin string, ready float64) model.Trace {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	tr := model.Trace{Blobs: map[string]int64{}, Ready: ready}
	for _, s := range r.seen {
		dgst := s.path[strings.LastIndex(s.path, "/")+1:]
		if _, ok := tr.Blobs[dgst]; !ok {
			resp, err := http.Head("http://" + origin + s.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			tr.Blobs[dgst] = resp.ContentLength
		}
		req := model.Request{Blob: dgst, Len: tr.Blobs[dgst], T: s.t, BeforeReady: true}
		if a, b, ok := strings.Cut(strings.TrimPrefix(s.rng, "bytes="), "-"); ok && s.rng != "" {
			first, _ := strconv.ParseInt(a, 10, 64)
			last, _ := strconv.ParseInt(b, 10, 64)
			req.Off, req.Len = first, last-first+1
		}
		tr.Requests = append(tr.Requests, req)
	}
	return tr
}

// originBandwidth times a GET of the trace's largest blob at the origin.
func originBandwidth(t *testing.T, origin string, tr model.Trace) float64 {
	t.Helper()
	var big string
	for d, n := range tr.Blobs {
		if big == "" || n > tr.Blobs[big] {
			big = d
		}
	}
	repo := "fleet/app"
	begin := time.Now()
	resp, err := http.Get("http://" + origin + "/v2/" + repo + "/blobs/" + big)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return float64(n) / time.Since(begin).Seconds()
}

// settle waits until the registries' access logs have had no new line for
// 2 s (at most 1 min): a cache stores blobs in the background.
func settle(t *testing.T, regs ...*debregistry.Registry) {
	t.Helper()
	last, quiet := -1, 0
	for deadline := time.Now().Add(time.Minute); quiet < 10; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the registries kept answering requests for a minute")
		}
		n := 0
		for _, r := range regs {
			n += len(requests(t, r))
		}
		if n == last {
			quiet++
		} else {
			last, quiet = n, 0
		}
	}
}
