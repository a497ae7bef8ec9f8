package service

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// lookupSigned finds the artifact of image signed with f's key.
func (f *fixture) lookupSigned(image string) (*artifact.Artifact, error) {
	v, err := signature.NewVerifier(f.key.Public())
	if err != nil {
		f.t.Fatal(err)
	}
	return artifact.Lookup(context.Background(), image, artifact.WithPlainHTTP(), artifact.WithVerifier(v))
}

// TestPushEventConverts: a push event queues the image; it is converted,
// signed, and a second event of it finds it converted. The events of the
// service's own pushes, pulls, blob pushes and referrers indexes queue
// nothing.
func TestPushEventConverts(t *testing.T) {
	f := newFixture(t, WithRepos("team/*"))
	d := f.pushImage("team/app", "v1", "one\n")
	code, body := f.post("/events", EventsMediaType, pushEvent(f.host, "team/app", "v1", string(types.DockerManifestSchema2), d, "skopeo/1.9.3"))
	if code != http.StatusOK || !strings.Contains(body, `"queued":1`) {
		t.Fatalf("/events: %d %s", code, body)
	}
	f.waitIdle()
	if n := f.count(outcomeConverted, reasonNone); n != 1 {
		t.Fatalf("%v converted; log:\n%s", n, f.log)
	}
	a, err := f.lookupSigned(f.host + "/team/app:v1")
	if err != nil {
		t.Fatalf("no artifact signed by the service's key: %v", err)
	}
	if !strings.Contains(f.log.String(), a.Descriptor.Digest.String()) {
		t.Errorf("the log does not name the artifact %s:\n%s", a.Descriptor.Digest, f.log)
	}

	f.post("/events", EventsMediaType, pushEvent(f.host, "team/app", "v2", string(types.DockerManifestSchema2), d, "skopeo/1.9.3"))
	f.waitIdle()
	if n := f.count(outcomeSkipped, reasonAlready); n != 1 {
		t.Errorf("pushed again: %v skipped as already converted; log:\n%s", n, f.log)
	}

	for what, body := range map[string]string{
		"own push":   pushEvent(f.host, "team/app", "", string(types.OCIManifestSchema1), a.Descriptor.Digest, userAgent+" go-containerregistry/v0.22.1"),
		"referrers":  pushEvent(f.host, "team/app", "sha256-"+d.Hex, string(types.OCIImageIndex), d, "other"),
		"blob":       pushEvent(f.host, "team/app", "", "application/octet-stream", d, "skopeo"),
		"pull":       strings.Replace(pushEvent(f.host, "team/app", "v1", string(types.DockerManifestSchema2), d, "containerd"), `"push"`, `"pull"`, 1),
		"other repo": pushEvent(f.host, "elsewhere/app", "v1", string(types.DockerManifestSchema2), d, "skopeo"),
	} {
		if code, body := f.post("/events", EventsMediaType, body); code != http.StatusOK || strings.Contains(body, `"queued"`) {
			t.Errorf("%s: /events answered %d %s", what, code, body)
		}
	}
}

// TestRepos: --repos decides which repositories are converted.
func TestRepos(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		repo     string
		want     bool
	}{
		{nil, "any/thing", true},
		{[]string{"team/*"}, "team/app", true},
		{[]string{"team/*"}, "team/sub/app", false},
		{[]string{"team/**"}, "team/sub/app", true},
		{[]string{"team/**"}, "team", false},
		{[]string{"**"}, "a/b/c", true},
		{[]string{"app"}, "app", true},
		{[]string{"other", "te?m/app"}, "team/app", true},
		{[]string{"registry.example:5000/team/*"}, "team/app", true},
		{[]string{"other.example/team/*"}, "team/app", false},
		{[]string{"localhost/**"}, "team/app", false},
	} {
		o, err := newOptions([]Option{WithRepos(tc.patterns...)})
		if err != nil {
			t.Fatal(err)
		}
		if got := o.repoMatches("registry.example:5000", tc.repo); got != tc.want {
			t.Errorf("patterns %q, repository %s: %v, want %v", tc.patterns, tc.repo, got, tc.want)
		}
	}
	if _, err := newOptions([]Option{WithRepos("team/[")}); err == nil {
		t.Error("a malformed pattern was accepted")
	}
}

// TestBadInput: each is answered, logged, counted and skipped, and the
// service keeps converting.
func TestBadInput(t *testing.T) {
	f := newFixture(t, WithMaxImageSize(1<<20), WithRepos("team/**"))
	log := func() string { return f.log.String() }

	t.Run("malformed envelope", func(t *testing.T) {
		for _, body := range []string{`{"events": [`, `[]`, `{}`, `{"events": 3}`, `{"events": []} {}`} {
			if code, _ := f.post("/events", EventsMediaType, body); code != http.StatusBadRequest {
				t.Errorf("%q: %d, want 400", body, code)
			}
		}
		if n := f.received("events", resultMalformed); n != 5 {
			t.Errorf("%v malformed envelopes counted, want 5", n)
		}
		if !strings.Contains(log(), "malformed notification refused") {
			t.Errorf("not logged:\n%s", log())
		}
	})

	t.Run("malformed request", func(t *testing.T) {
		for _, body := range []string{`{`, `{"image": ""}`, `{"image": "no-registry"}`, `{"image": "r.example/Bad Name:v1"}`} {
			if code, _ := f.post("/convert", "application/json", body); code != http.StatusBadRequest {
				t.Errorf("%q: %d, want 400", body, code)
			}
		}
		if code, ans := f.request(f.host + "/other/app:v1"); code != http.StatusForbidden || ans.Result != resultRepo {
			t.Errorf("a repository --repos does not match: %d %+v", code, ans)
		}
	})

	t.Run("deleted manifest", func(t *testing.T) {
		d := f.pushImage("team/deleted", "v1", "gone\n")
		if err := remote.Delete(f.ref("team/deleted@" + d.String())); err != nil {
			t.Fatal(err)
		}
		f.post("/events", EventsMediaType, pushEvent(f.host, "team/deleted", "v1", string(types.DockerManifestSchema2), d, "skopeo"))
		f.waitIdle()
		if f.count(outcomeRefused, reasonNotFound) != 1 || !strings.Contains(log(), `"reason":"not found"`) {
			t.Errorf("not counted or logged:\n%s", log())
		}
	})

	t.Run("too large", func(t *testing.T) {
		// Zeros: a small blob, a large tar.
		blob := static.NewLayer(gzipped(t, tarOf(t, "zeros", make([]byte, 2<<20))), types.DockerLayer)
		img, err := mutate.AppendLayers(empty.Image, blob)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(f.ref("team/big:v1"), img); err != nil {
			t.Fatal(err)
		}
		code, ans := f.request(f.host + "/team/big:v1")
		if code != http.StatusAccepted || ans.Result != resultQueued {
			t.Fatalf("/convert: %d %+v", code, ans)
		}
		f.waitIdle()
		if f.count(outcomeRefused, reasonTooLarge) != 1 || !strings.Contains(log(), `"reason":"too large"`) {
			t.Errorf("not counted or logged:\n%s", log())
		}
		if left, _ := os.ReadDir(f.svc.workDir); len(left) != 0 {
			t.Errorf("the work dir holds %d entries", len(left))
		}
	})

	t.Run("not an image", func(t *testing.T) {
		chart := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), "application/vnd.cncf.helm.config.v1+json")
		chart, err := mutate.AppendLayers(chart, static.NewLayer([]byte("chart"), "application/vnd.cncf.helm.chart.content.v1.tar+gzip"))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(f.ref("team/chart:v1"), chart); err != nil {
			t.Fatal(err)
		}
		d, _ := chart.Digest()
		f.post("/events", EventsMediaType, pushEvent(f.host, "team/chart", "v1", string(types.OCIManifestSchema1), d, "helm"))
		f.waitIdle()
		if f.count(outcomeSkipped, reasonNotImage) != 1 {
			t.Errorf("not counted:\n%s", log())
		}
	})

	t.Run("still serving", func(t *testing.T) {
		f.pushImage("team/good", "v1", "good\n")
		if code, _ := f.request(f.host + "/team/good:v1"); code != http.StatusAccepted {
			t.Fatalf("/convert: %d", code)
		}
		f.waitIdle()
		if _, err := f.lookupSigned(f.host + "/team/good:v1"); err != nil {
			t.Errorf("after the bad input: %v\n%s", err, log())
		}
		if code, body := f.get("/healthz"); code != http.StatusOK {
			t.Errorf("/healthz: %d %s", code, body)
		}
	})
}

func (f *fixture) get(path string) (int, string) {
	f.t.Helper()
	resp, err := http.Get(f.http.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestIndexQueuesItsPlatforms: an index is converted platform by
// platform; a platform's own push event adds nothing.
func TestIndexQueuesItsPlatforms(t *testing.T) {
	f := newFixture(t)
	amd := f.pushImage("team/multi", "amd64", "amd64\n")
	arm := f.pushImage("team/multi", "arm64", "arm64\n")
	var adds []mutate.IndexAddendum
	for _, x := range []struct {
		d    v1.Hash
		arch string
	}{{amd, "amd64"}, {arm, "arm64"}} {
		img, err := remote.Image(f.ref("team/multi@" + x.d.String()))
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: x.arch}}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	if err := remote.WriteIndex(f.ref("team/multi:v1"), idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	f.post("/events", EventsMediaType, pushEvent(f.host, "team/multi", "v1", string(types.OCIImageIndex), d, "skopeo")+"\n")
	f.waitIdle()
	if f.count(outcomeExpanded, reasonPlatforms) != 1 || f.count(outcomeConverted, reasonNone) != 2 {
		t.Fatalf("expanded %v, converted %v:\n%s", f.count(outcomeExpanded, reasonPlatforms), f.count(outcomeConverted, reasonNone), f.log)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		pl, _ := v1.ParsePlatform(p)
		v, _ := signature.NewVerifier(f.key.Public())
		if _, err := artifact.Lookup(context.Background(), f.host+"/team/multi:v1", artifact.WithPlainHTTP(), artifact.WithVerifier(v), artifact.WithPlatform(*pl)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestRestartRunsLeftJobs: jobs queued when the service stopped (or was
// killed) run at the next start, and what a crash left in the work dir is
// removed.
func TestRestartRunsLeftJobs(t *testing.T) {
	f := newFixture(t, WithMaxParallel(1))
	f.shutdown()
	d := f.pushImage("team/left", "v1", "left\n")
	q, err := openQueue(context.Background(), filepath.Join(f.state, "queue"), 10)
	if err != nil {
		t.Fatal(err)
	}
	key := f.host + "/team/left@" + d.String()
	if added, err := q.add(&job{Key: key, Origin: "event"}); !added || err != nil {
		t.Fatal(added, err)
	}
	stale := filepath.Join(f.work, "sluice-convert-service", "0123456789abcdef", "sluice-convert-1", "rootfs.ext4")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("half a conversion"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.state, "queue", ".tmp-123"), []byte(`{"key":`), 0o600)

	f.start(WithSignKey(f.key), WithPlainHTTP())
	f.waitIdle()
	if _, err := f.lookupSigned(key); err != nil {
		t.Fatalf("the job left queued was not converted: %v\n%s", err, f.log)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale work dir is still there: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(f.state, "queue")); len(ents) != 0 {
		t.Errorf("the queue dir holds %d files once the job is done", len(ents))
	}
}

// TestStateDirIsLocked: a second service on the same state dir is
// refused.
func TestStateDirIsLocked(t *testing.T) {
	f := newFixture(t)
	_, err := New(context.Background(), f.state, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "another conversion service") {
		t.Fatalf("a second service on the state dir: %v", err)
	}
}
