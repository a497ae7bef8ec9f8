package agent

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/debregistry"
)

// writeHostsDir writes a containerd config_path with one hosts.toml, for
// registry (host:port), and returns the config_path.
func writeHostsDir(t *testing.T, registry, content string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strings.Replace(registry, ":", "_", 1)+"_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// blobTraffic sums an access log's GETs of some blobs: requests and bytes
// by digest, for the clients whose User-Agent from accepts.
type blobTraffic struct {
	gets   map[string]int
	bytes  map[string]int64
	status map[int]int
}

func trafficOf(reqs []debregistry.Request, blobs map[string]bool, from func(ua string) bool) blobTraffic {
	tr := blobTraffic{gets: map[string]int{}, bytes: map[string]int64{}, status: map[int]int{}}
	for _, q := range reqs {
		_, d := q.Blob()
		if q.Method != http.MethodGet || !blobs[d] || !from(q.UserAgent) {
			continue
		}
		tr.gets[d]++
		tr.bytes[d] += q.Bytes
		tr.status[q.Status]++
	}
	return tr
}

func (tr blobTraffic) total() (gets int, bytes int64) {
	for d, n := range tr.gets {
		gets += n
		bytes += tr.bytes[d]
	}
	return gets, bytes
}

// settle waits until each registry's access log has had no new line for
// 2 s (at most 1 min): the cache stores blobs in the background, and logs
// a request it streamed when the stream ends.
func settle(t *testing.T, regs ...*debregistry.Registry) {
	t.Helper()
	last, quiet := -1, 0
	if err := waitFor(time.Minute, func() bool {
		n := 0
		for _, r := range regs {
			reqs, err := r.Requests(0)
			if err != nil {
				t.Fatal(err)
			}
			n += len(reqs)
		}
		if n == last {
			quiet++
		} else {
			last, quiet = n, 0
		}
		return quiet >= 10 // 10 polls of 200 ms
	}); err != nil {
		t.Fatalf("the registries kept answering requests for a minute")
	}
}

func isSluice(ua string) bool { return strings.HasPrefix(ua, "sluice") }

// The cache's own requests to its upstream carry Go's default User-Agent.
func isCache(ua string) bool { return strings.HasPrefix(ua, "Go-http-client") }

// TestMirrorPullThroughCache: two nodes (each its own sluiced, cache dir
// and sockets, and containerd) whose hosts.toml puts Debian's
// docker-registry as a pull-through cache in front of the origin stream
// the same image and read every file of it, one after the other.
//
// The cache answers the first node's first range of a blob it lacks with
// the whole blob, streamed from the origin (distribution 2.8 does, while
// it fills its store: see debregistry.TestProxy); the node takes that
// answer and then goes around the cache for a while (each request the
// cache streams would cost the origin another whole copy), fetching its
// ranges from the origin. So the origin's access log shows: the nodes'
// own fetches adding up to at most each blob once (no chunk range twice);
// the cache's GETs of a blob no more than its store's copy plus the
// answers it streamed; and nothing at all for the second node, which the
// cache serves.
func TestMirrorPullThroughCache(t *testing.T) {
	e := getEnv(t)
	cache := startRegistry(t, t.TempDir(), debregistry.WithAccessLog(), debregistry.WithProxy("http://"+e.registry.Addr))
	hosts := writeHostsDir(t, e.registry.Addr, `
[host."http://`+cache.Addr+`"]
  capabilities = ["pull", "resolve"]
`)
	a := e.images[repoA]
	anyUA := func(string) bool { return true }
	originMark := e.mark(t)
	var phases []blobTraffic // the origin's artifact blob traffic during each node's run
	for i := range 2 {
		mark := e.mark(t)
		n := newNode(t, e, nodeOpts{noSandbox: true, hostsDir: hosts, backgroundRate: "0"})
		if out, err := n.sluicePull("default", a.ref); err != nil {
			t.Fatalf("node %d: sluice pull: %v\n%s", i+1, err, out)
		}
		e.checkNoLayerDownloads(t, mark, a, "sluice pull through the cache")
		l, err := parseListing(n.ctrRun("default", a.ref, "mirror-list", "/bin/sh", "-c", listScript))
		if err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
		if d := a.listing.diff(l, 30); len(d) > 0 {
			t.Errorf("node %d: root filesystem differs from the reference:\n%s", i+1, strings.Join(d, "\n"))
		}
		answered, passed := n.labelled(`sluice_mirror_requests_total{result="answered"}`), n.labelled(`sluice_mirror_requests_total{result="passed_on"}`)
		if answered == 0 || passed != 0 || n.metric("sluice_read_errors_total") != 0 {
			t.Errorf("node %d: the cache answered %v range requests and passed %v on, %v read errors; want some, none, none",
				i+1, answered, passed, n.metric("sluice_read_errors_total"))
		}
		t.Logf("node %d: %v range requests answered by the cache, %v bytes fetched", i+1, answered, n.metric("sluice_fetched_bytes_total"))
		// The cache stores what it fetched in the background: let its
		// GETs to the origin end before this node's run is counted.
		settle(t, e.registry, cache)
		reqs, err := e.registry.Requests(mark)
		if err != nil {
			t.Fatal(err)
		}
		phases = append(phases, trafficOf(reqs, e.artifactBlobs, anyUA))
	}

	reqs, err := e.registry.Requests(originMark)
	if err != nil {
		t.Fatal(err)
	}
	direct := trafficOf(reqs, e.artifactBlobs, isSluice)
	for d, b := range direct.bytes {
		if size := blobSize(t, e.registry.Addr, repoA, d); b > size {
			t.Errorf("the nodes fetched %d bytes of blob %s (%d bytes) from the origin in %d GETs: some range twice", b, d, size, direct.gets[d])
		}
	}
	fills := trafficOf(reqs, e.artifactBlobs, isCache)
	if gets, _ := phases[1].total(); gets != 0 {
		t.Errorf("the second node cost the origin %d GETs of artifact blobs (%v), want none: the cache holds them", gets, phases[1].gets)
	}
	served, err := cache.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	byNodes := trafficOf(served, e.artifactBlobs, isSluice)
	if len(byNodes.gets) == 0 {
		t.Fatal("the cache served no artifact blob to the nodes")
	}
	// The cache's answers other than 206, by blob: each may have been
	// streamed from the origin (a 200; or a 500 logged when the node hung
	// up on it, its fetch cancelled, before the first byte).
	streamed := map[string]int{}
	for _, q := range served {
		if _, d := q.Blob(); e.artifactBlobs[d] && isSluice(q.UserAgent) && q.Method == http.MethodGet && q.Status != http.StatusPartialContent {
			streamed[d]++
		}
	}
	for _, q := range served {
		if _, d := q.Blob(); e.artifactBlobs[d] && q.Status != http.StatusPartialContent {
			t.Logf("cache: %s %d %d bytes %q", q.Path, q.Status, q.Bytes, q.UserAgent)
		}
	}
	for _, q := range reqs {
		if _, d := q.Blob(); e.artifactBlobs[d] {
			t.Logf("origin: %s %s %d %d bytes %q", q.Method, q.Path, q.Status, q.Bytes, q.UserAgent)
		}
	}
	for d, n := range fills.gets {
		if n > 1+streamed[d] {
			t.Errorf("the origin sent blob %s to the cache %d times (%d bytes), more than its store's copy and the %d answers it streamed through",
				d, n, fills.bytes[d], streamed[d])
		}
	}
	originGets, originBytes := fills.total()
	nodeGets, nodeBytes := byNodes.total()
	directGets, directBytes := direct.total()
	t.Logf("origin: %d GETs of artifact blobs, %d bytes, to the cache (%v); %d GETs, %d bytes straight to the nodes; cache: %d GETs, %d bytes to the nodes (statuses %v)",
		originGets, originBytes, fills.gets, directGets, directBytes, nodeGets, nodeBytes, byNodes.status)
}

// blobSize asks registry for the size of a blob of repo.
func blobSize(t *testing.T, registry, repo, digest string) int64 {
	t.Helper()
	resp, err := http.Head("http://" + registry + "/v2/" + repo + "/blobs/" + digest)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		t.Fatalf("HEAD of blob %s: %s, %d bytes", digest, resp.Status, resp.ContentLength)
	}
	return resp.ContentLength
}

// TestMirrorDownOr404: a mirror that is down (a closed port) and one that
// answers 404 (a registry without the image) pass every request on to the
// origin: the image streams, every file reads back right, no read fails.
func TestMirrorDownOr404(t *testing.T) {
	e := getEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()
	empty := startRegistry(t, t.TempDir(), debregistry.WithAccessLog())
	hosts := writeHostsDir(t, e.registry.Addr, `
[host."http://`+down+`"]
  capabilities = ["pull", "resolve"]
[host."http://`+empty.Addr+`"]
  capabilities = ["pull", "resolve"]
`)
	a := e.images[repoA]
	mark := e.mark(t)
	n := newNode(t, e, nodeOpts{noSandbox: true, hostsDir: hosts, backgroundRate: "0"})
	if out, err := n.sluicePull("default", a.ref); err != nil {
		t.Fatalf("sluice pull: %v\n%s", err, out)
	}
	e.checkNoLayerDownloads(t, mark, a, "sluice pull past failing mirrors")
	list, err := parseListing(n.ctrRun("default", a.ref, "mirror-down-list", "/bin/sh", "-c", listScript))
	if err != nil {
		t.Fatal(err)
	}
	if d := a.listing.diff(list, 30); len(d) > 0 {
		t.Errorf("root filesystem differs from the reference:\n%s", strings.Join(d, "\n"))
	}
	if v := n.metric("sluice_read_errors_total"); v != 0 {
		t.Errorf("%v read errors", v)
	}
	if answered, passed := n.labelled(`sluice_mirror_requests_total{result="answered"}`), n.labelled(`sluice_mirror_requests_total{result="passed_on"}`); answered != 0 || passed == 0 {
		t.Errorf("mirrors answered %v range requests and passed %v on; want none and some", answered, passed)
	}
	asked, err := empty.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	if tr := trafficOf(asked, e.artifactBlobs, isSluice); tr.status[http.StatusNotFound] == 0 || len(tr.status) != 1 {
		t.Errorf("the 404 mirror's answers to the node's blob GETs: %v, want only 404s", tr.status)
	}
	reqs, err := e.registry.Requests(mark)
	if err != nil {
		t.Fatal(err)
	}
	if tr := trafficOf(reqs, e.artifactBlobs, isSluice); len(tr.gets) == 0 {
		t.Error("the origin served no artifact blob to the node")
	}
}
