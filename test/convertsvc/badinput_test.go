package convertsvc

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"

	"github.com/sluice-project/sluice/test/internal/debregistry"
)

// pushEnvelope is the envelope docker-registry 2.8 sends for the push of a
// manifest (as captured from it), for registry, repo, tag and digest.
func pushEnvelope(registry, repo, tag, mediaType, digest string) string {
	return fmt.Sprintf(`{
   "events": [
      {
         "id": "0b8d4b1e-6a44-4a3b-9d2e-1c6f3f7b9a10",
         "timestamp": "2026-12-06T10:53:29.049413056Z",
         "action": "push",
         "target": {
            "mediaType": %q,
            "size": 424,
            "digest": %q,
            "length": 424,
            "repository": %q,
            "url": "http://%s/v2/%s/manifests/%s",
            "tag": %q
         },
         "request": {
            "id": "09ad4fe3-2fc1-4e5b-a2eb-f67eb1e540d9",
            "addr": "127.0.0.1:45142",
            "host": %q,
            "method": "PUT",
            "useragent": "skopeo/1.9.3"
         },
         "actor": {},
         "source": {
            "addr": "vm:5000",
            "instanceID": "eb9ff8fd-ac6f-4a75-b065-2328fabd3c5d"
         }
      }
   ]
}`, mediaType, digest, repo, registry, repo, digest, tag, registry)
}

// logged reports whether a log line of the service with message msg names
// image (in its "image" field) and reason.
func (s *service) logged(msg, image, reason string) bool {
	for _, l := range s.entries(msg) {
		if im, _ := l["image"].(string); strings.Contains(im, image) && l["reason"] == reason {
			return true
		}
	}
	return false
}

// TestBadInput: each of these is logged, counted and skipped while the
// service keeps serving: a notification for a manifest deleted since, an
// image beyond the size bound, a non-image artifact, a malformed envelope,
// and a request for a registry the service has no credentials for. Then
// a push is still converted.
func TestBadInput(t *testing.T) {
	e := getEnv(t)
	svc := e.svc
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	before, err := svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	count := func(k string) float64 {
		t.Helper()
		m, err := svc.metrics()
		if err != nil {
			t.Fatal(err)
		}
		return m[k] - before[k]
	}

	t.Run("deleted manifest", func(t *testing.T) {
		ti := newImage(t, dir, "bad-deleted", 64<<10)
		if err := skopeoPush(ctx, ti, e.plain.Addr+"/bad/deleted:v1"); err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(e.plain.Addr+"/bad/deleted@"+ti.digest, name.Insecure)
		if err := remote.Delete(ref); err != nil {
			t.Fatal(err)
		}
		code, body, err := svc.post("/events", "application/vnd.docker.distribution.events.v1+json",
			pushEnvelope(e.plain.Addr, "bad/deleted", "v1", string(types.OCIManifestSchema1), ti.digest))
		if err != nil || code != http.StatusOK {
			t.Fatalf("/events: %d %s %v", code, body, err)
		}
		svc.idle(t, time.Minute)
		if n := count(conversions("refused", "not found")); n != 1 {
			t.Errorf("refused as not found: %v", n)
		}
		if !svc.logged("refused", "bad/deleted@"+ti.digest, "not found") {
			t.Errorf("no log line names the image and why:\n%s", svc.logTail(10))
		}
	})

	t.Run("too large", func(t *testing.T) {
		// 16 MiB of zeros: a small blob (the compressed bytes pass the
		// first check) whose tar passes the bound while it is read.
		ti := zerosImage(t, dir, "bad-big", 16<<20)
		peakBefore := svc.peakWorkDir()
		if err := skopeoPush(ctx, ti, e.notifying.Addr+"/bad/big:v1"); err != nil {
			t.Fatal(err)
		}
		if err := waitFor(time.Minute, func() bool { return count(conversions("refused", "too large")) == 1 }); err != nil {
			t.Fatalf("not refused as too large:\n%s", svc.logTail(10))
		}
		if !svc.logged("refused", "bad/big@"+ti.digest, "too large") {
			t.Errorf("no log line names the image and why:\n%s", svc.logTail(10))
		}
		if peak := svc.peakWorkDir(); peak > peakBefore && peak > maxImageSize {
			t.Errorf("the work dir reached %d bytes converting an image refused at %d", peak, maxImageSize)
		}
	})

	t.Run("not an image", func(t *testing.T) {
		// A Helm chart, as helm push stores it.
		chart := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), "application/vnd.cncf.helm.config.v1+json")
		chart, err := mutate.AppendLayers(chart, static.NewLayer([]byte("not a tar"), "application/vnd.cncf.helm.chart.content.v1.tar+gzip"))
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(e.notifying.Addr+"/bad/chart:1.0.0", name.Insecure)
		if err := remote.Write(ref, chart, remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
		d, _ := chart.Digest()
		if err := waitFor(time.Minute, func() bool { return svc.logged("skipped", "bad/chart@"+d.String(), "not an image") }); err != nil {
			t.Fatalf("the chart was not skipped as not an image:\n%s", svc.logTail(10))
		}
		if n := count(conversions("skipped", "not an image")); n < 1 {
			t.Errorf("skipped as not an image: %v", n)
		}
	})

	t.Run("malformed envelope", func(t *testing.T) {
		for _, body := range []string{`{"events": [{"action": "push"`, `<html>not json</html>`, `{"no": "events"}`} {
			code, answer, err := svc.post("/events", "application/vnd.docker.distribution.events.v1+json", body)
			if err != nil || code != http.StatusBadRequest {
				t.Errorf("%q: %d %s %v, want 400", body, code, answer, err)
			}
		}
		if n := count(received("events", "malformed")); n != 3 {
			t.Errorf("malformed envelopes counted: %v, want 3", n)
		}
		if len(svc.entries("malformed notification refused")) < 3 {
			t.Errorf("malformed envelopes not logged:\n%s", svc.logTail(10))
		}
	})

	t.Run("no credentials", func(t *testing.T) {
		hash, err := bcrypt.GenerateFromPassword([]byte("ci-password"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		private := startRegistry(t, debregistry.WithHtpasswd(htpasswd))
		ti := newImage(t, dir, "bad-private", 64<<10)
		if err := skopeoPush(ctx, ti, private.Addr+"/bad/private:v1", "ci:ci-password"); err != nil {
			t.Fatal(err)
		}
		image := private.Addr + "/bad/private@" + ti.digest
		if code, body := svc.request(t, image); code != http.StatusAccepted {
			t.Fatalf("/convert: %d %s", code, body)
		}
		svc.idle(t, time.Minute)
		if n := count(conversions("refused", "registry denied access")); n != 1 {
			t.Errorf("refused as denied: %v", n)
		}
		if !svc.logged("refused", image, "registry denied access") {
			t.Errorf("no log line names the image and why:\n%s", svc.logTail(10))
		}
	})

	t.Run("still serving", func(t *testing.T) {
		resp, err := http.Get("http://" + svc.addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/healthz: %s", resp.Status)
		}
		ti := newImage(t, dir, "bad-then-good", 64<<10)
		image := e.notifying.Addr + "/bad/good:v1"
		if err := skopeoPush(ctx, ti, image); err != nil {
			t.Fatal(err)
		}
		e.waitConverted(t, image, 2*time.Minute)
		if !svc.proc.Running() {
			t.Error("the service exited")
		}
	})
	svc.checkRaces(t)
}
