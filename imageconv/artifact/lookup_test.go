package artifact_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/test/testutil"
)

func pushImage(t *testing.T, host, repo, content string) (name.Reference, v1.Hash) {
	t.Helper()
	blob := testutil.LayerBlob(t, testutil.LayerSpec{"etc/": "", "etc/content": content})
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/"+repo+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref, d
}

func convert(t *testing.T, ref name.Reference, chunkSize int64) v1.Hash {
	t.Helper()
	rs, err := imageconv.Convert(context.Background(), ref.String(), imageconv.WithPlainHTTP(),
		imageconv.WithWorkDir(t.TempDir()), imageconv.WithChunkSize(chunkSize))
	if err != nil {
		t.Fatal(err)
	}
	return rs[0].Artifact
}

// graft pushes a copy of the artifact manifest art (in from's repository)
// with its subject rewritten to subject: what anyone with push rights can
// do. It returns the copy's digest.
func graft(t *testing.T, from name.Reference, art v1.Hash, to name.Reference, subject v1.Hash) v1.Hash {
	t.Helper()
	got, err := remote.Get(from.Context().Digest(art.String()))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(got.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	for _, l := range append(m["layers"].([]any), m["config"]) {
		d := l.(map[string]any)["digest"].(string)
		layer, err := remote.Layer(from.Context().Digest(d))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(to.Context(), layer); err != nil {
			t.Fatal(err)
		}
	}
	target, err := remote.Get(to)
	if err != nil {
		t.Fatal(err)
	}
	m["subject"] = map[string]any{"mediaType": string(target.MediaType), "digest": subject.String(), "size": target.Size}
	raw, _ := json.Marshal(m)
	d := artifact.Digest(raw)
	if err := remote.Put(to.Context().Digest(d.String()), rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
	return d
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// trustOnly is a Verifier that trusts one digest.
type trustOnly v1.Hash

func (v trustOnly) Verify(_ context.Context, _ name.Repository, d v1.Descriptor, _ []remote.Option) (artifact.Verdict, error) {
	if d.Digest == v1.Hash(v) {
		return artifact.Verdict{Policy: "test", Key: "k"}, nil
	}
	return artifact.Verdict{}, artifact.ErrUntrusted
}
func (v trustOnly) Accepts(artifact.Verdict) bool { return true }

// TestSeveralArtifactsNeverChosenByOrder: with two artifacts of one image
// and no verifier, Lookup uses neither (whatever their digests), and says
// so naming both; a verifier that trusts one selects it.
func TestSeveralArtifactsNeverChosenByOrder(t *testing.T) {
	host := testutil.Registry(t)
	ref, _ := pushImage(t, host, "app", "app\n")
	a := convert(t, ref, 64<<10)
	b := convert(t, ref, 128<<10)
	ctx := context.Background()
	_, err := artifact.Lookup(ctx, ref.String(), artifact.WithPlainHTTP())
	if !errors.Is(err, artifact.ErrAmbiguous) || !strings.Contains(err.Error(), a.String()) || !strings.Contains(err.Error(), b.String()) {
		t.Fatalf("two artifacts, no verifier: %v, want ErrAmbiguous naming both", err)
	}
	for _, trusted := range []v1.Hash{a, b} {
		got, err := artifact.Lookup(ctx, ref.String(), artifact.WithPlainHTTP(), artifact.WithVerifier(trustOnly(trusted)))
		if err != nil || got.Descriptor.Digest != trusted || len(got.Rejected) != 1 || !errors.Is(got.Rejected[0].Err, artifact.ErrUntrusted) {
			t.Fatalf("verifier trusting %s: %+v, %v", trusted, got, err)
		}
	}
	both := trustAll{}
	if _, err := artifact.Lookup(ctx, ref.String(), artifact.WithPlainHTTP(), artifact.WithVerifier(both)); !errors.Is(err, artifact.ErrSeveralTrusted) {
		t.Errorf("two trusted artifacts: %v, want ErrSeveralTrusted", err)
	}
}

type trustAll struct{}

func (trustAll) Verify(context.Context, name.Repository, v1.Descriptor, []remote.Option) (artifact.Verdict, error) {
	return artifact.Verdict{Policy: "test"}, nil
}
func (trustAll) Accepts(artifact.Verdict) bool { return true }

// TestGraftedArtifact: another image's artifact grafted onto an image
// beside its own makes the image ambiguous (never the graft's rootfs);
// under a verifier that trusts the image's own, the graft is rejected.
func TestGraftedArtifact(t *testing.T) {
	host := testutil.Registry(t)
	ref, digest := pushImage(t, host, "app", "app\n")
	own := convert(t, ref, 64<<10)
	evil, _ := pushImage(t, host, "evil", "evil\n")
	evilArt := convert(t, evil, 64<<10)
	grafted := graft(t, evil, evilArt, ref, digest)
	ctx := context.Background()
	if _, err := artifact.Lookup(ctx, ref.String(), artifact.WithPlainHTTP()); !errors.Is(err, artifact.ErrAmbiguous) {
		t.Fatalf("graft beside the image's own artifact: %v, want ErrAmbiguous", err)
	}
	got, err := artifact.Lookup(ctx, ref.String(), artifact.WithPlainHTTP(), artifact.WithVerifier(trustOnly(own)))
	if err != nil || got.Descriptor.Digest != own || len(got.Rejected) != 1 || got.Rejected[0].Descriptor.Digest != grafted {
		t.Fatalf("graft under a verifier: %+v, %v; want the image's own artifact, the graft %s rejected", got, err, grafted)
	}
}

// TestReferrerOfAnotherSubject: a referrers list that names an artifact
// whose own subject is another image (as a tag-schema index anyone can
// push may) does not make that artifact the image's.
func TestReferrerOfAnotherSubject(t *testing.T) {
	reg := testutil.NewRegistry()
	var forged []byte
	var victim string
	host := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if forged != nil && strings.HasSuffix(r.URL.Path, "/referrers/"+victim) {
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			w.Write(forged)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	ref, digest := pushImage(t, host, "app", "app\n")
	evil, evilDigest := pushImage(t, host, "app2", "evil\n")
	convert(t, evil, 64<<10)
	idx, err := remote.Referrers(evil.Context().Digest(evilDigest.String()))
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	// The evil artifact is in app2; copy it into app untouched (subject
	// still app2's image), then list it as app's referrer.
	got, err := remote.Get(evil.Context().Digest(im.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Layers []v1.Descriptor `json:"layers"`
		Config v1.Descriptor   `json:"config"`
	}
	json.Unmarshal(got.Manifest, &m)
	for _, d := range append(m.Layers, m.Config) {
		l, _ := remote.Layer(evil.Context().Digest(d.Digest.String()))
		if err := remote.WriteLayer(ref.Context(), l); err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Put(ref.Context().Digest(im.Manifests[0].Digest.String()), rawManifest(got.Manifest)); err != nil {
		t.Fatal(err)
	}
	forged, _ = json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: im.Manifests})
	victim = digest.String()
	_, err = artifact.Lookup(context.Background(), ref.String(), artifact.WithPlainHTTP())
	if !errors.Is(err, artifact.ErrWrongSubject) {
		t.Fatalf("an artifact of another image listed as this one's: %v, want ErrWrongSubject", err)
	}
}

// TestLookupPingsOnce: a lookup's requests (referrers, artifact manifest,
// index blob) share one ping of the registry, not one each: each is a
// round trip before the image can start.
func TestLookupPingsOnce(t *testing.T) {
	reg := testutil.NewRegistry()
	var (
		mu    sync.Mutex
		pings int
		all   []string
	)
	host := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		all = append(all, r.Method+" "+r.URL.Path)
		if r.URL.Path == "/v2/" {
			pings++
		}
		mu.Unlock()
		reg.ServeHTTP(w, r)
	}))
	ref, digest := pushImage(t, host, "app", "app\n")
	convert(t, ref, 64<<10)
	mu.Lock()
	pings, all = 0, nil
	mu.Unlock()
	if _, err := artifact.LookupManifest(context.Background(), ref.String(), digest.String(), artifact.WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if pings != 1 || len(all) != 4 {
		t.Errorf("a lookup made %d pings in %d requests, want 1 in 4 (ping, referrers, manifest, index):\n%s", pings, len(all), strings.Join(all, "\n"))
	}
}
