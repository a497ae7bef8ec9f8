package imageconv

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func platformImage(t *testing.T, arch, body string) v1.Image {
	img, err := mutate.AppendLayers(empty.Image, layerOf(t, []entry{{name: "arch", body: body}}))
	if err != nil {
		t.Fatal(err)
	}
	cf := mustConfig(t, img)
	cf.Architecture = arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestConvertMultiPlatform(t *testing.T) {
	host := testRegistry(t)
	amd, arm := platformImage(t, "amd64", "x86"), platformImage(t, "arm64", "arm")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref := host + "/multi:v1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Only one platform when asked.
	only, err := ParsePlatforms("linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Convert(ctx, ref, WithPlainHTTP(), WithPlatforms(only...), WithWorkDir(t.TempDir()))
	if err != nil || len(rs) != 1 || rs[0].Platform != "linux/arm64/v8" {
		t.Fatalf("Convert --platform linux/arm64: %+v, %v", rs, err)
	}
	if _, err := Lookup(ctx, ref, WithPlainHTTP()); err == nil {
		t.Fatal("amd64 has an artifact although only arm64 was converted")
	}

	// Every platform by default, one artifact each, subject = its manifest.
	rs, err = Convert(ctx, ref, WithPlainHTTP(), WithWorkDir(t.TempDir()))
	if err != nil || len(rs) != 2 {
		t.Fatalf("Convert: %d results, %v", len(rs), err)
	}
	for _, want := range []struct {
		platform string
		img      v1.Image
	}{{"linux/amd64", amd}, {"linux/arm64", arm}} {
		ps, _ := ParsePlatforms(want.platform)
		a, err := Lookup(ctx, ref, WithPlainHTTP(), WithPlatforms(ps...))
		if err != nil {
			t.Fatalf("%s: %v", want.platform, err)
		}
		d, _ := want.img.Digest()
		if a.Subject.Digest != d {
			t.Errorf("%s: artifact subject %s, want the platform manifest %s", want.platform, a.Subject.Digest, d)
		}
		if !strings.HasPrefix(a.Platform, want.platform) {
			t.Errorf("%s: artifact says platform %q", want.platform, a.Platform)
		}
		// By manifest digest, as the agent looks it up from CRI's labels.
		m, err := LookupManifest(ctx, ref, d.String(), WithPlainHTTP())
		if err != nil {
			t.Fatalf("%s: LookupManifest: %v", want.platform, err)
		}
		if m.Descriptor.Digest != a.Descriptor.Digest || m.Index.ImageSize != a.Index.ImageSize {
			t.Errorf("%s: LookupManifest found %s, Lookup %s", want.platform, m.Descriptor.Digest, a.Descriptor.Digest)
		}
	}
	if _, err := LookupManifest(ctx, ref, "sha256:"+strings.Repeat("0", 64), WithPlainHTTP()); !errors.Is(err, ErrNoArtifact) {
		t.Errorf("LookupManifest of an unknown manifest: %v, want ErrNoArtifact", err)
	}
	if _, err := LookupManifest(ctx, ref, "sha256:nothex", WithPlainHTTP()); err == nil || !strings.Contains(err.Error(), "manifest digest") {
		t.Errorf("LookupManifest of a malformed digest: %v", err)
	}
	if rs[0].Artifact == rs[1].Artifact {
		t.Error("both platforms got the same artifact")
	}
	if _, err := Convert(ctx, ref, WithPlainHTTP(), WithPlatforms(v1.Platform{OS: "linux", Architecture: "s390x"})); err == nil ||
		!strings.Contains(err.Error(), "no image for the platforms asked for") {
		t.Errorf("an absent platform gave %v", err)
	}
}

// TestConvertDockerConfigCredentials uses credentials from a docker config
// file, as the default keychain finds them.
func TestConvertDockerConfigCredentials(t *testing.T) {
	reg := registry.New(registry.WithReferrersSupport(true), registry.Logger(nopLogger()))
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "sluice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`, http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("sluice:s3cret"))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	ref := pushImage(t, host, "private:v1", layerOf(t, []entry{{name: "secret", body: "42"}}))
	convertOne(t, ref)
	if _, err := Lookup(context.Background(), ref, WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
}
