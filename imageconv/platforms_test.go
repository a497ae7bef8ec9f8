package imageconv

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/test/testutil"

	"github.com/sluice-project/sluice/imageconv/artifact"
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
	host := testutil.Registry(t)
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
	only, err := artifact.ParsePlatforms("linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Convert(ctx, ref, WithPlainHTTP(), WithPlatforms(only...), WithWorkDir(t.TempDir()))
	if err != nil || len(rs) != 1 || rs[0].Platform != "linux/arm64/v8" {
		t.Fatalf("Convert --platform linux/arm64: %+v, %v", rs, err)
	}
	if _, err := artifact.Lookup(ctx, ref, artifact.WithPlainHTTP()); err == nil {
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
		ps, _ := artifact.ParsePlatforms(want.platform)
		a, err := artifact.Lookup(ctx, ref, artifact.WithPlainHTTP(), artifact.WithPlatform(ps[0]))
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
		m, err := artifact.LookupManifest(ctx, ref, d.String(), artifact.WithPlainHTTP())
		if err != nil {
			t.Fatalf("%s: LookupManifest: %v", want.platform, err)
		}
		if m.Descriptor.Digest != a.Descriptor.Digest || m.Index.ImageSize != a.Index.ImageSize {
			t.Errorf("%s: LookupManifest found %s, Lookup %s", want.platform, m.Descriptor.Digest, a.Descriptor.Digest)
		}
	}
	if _, err := artifact.LookupManifest(ctx, ref, "sha256:"+strings.Repeat("0", 64), artifact.WithPlainHTTP()); !errors.Is(err, artifact.ErrNoArtifact) {
		t.Errorf("LookupManifest of an unknown manifest: %v, want ErrNoArtifact", err)
	}
	if _, err := artifact.LookupManifest(ctx, ref, "sha256:nothex", artifact.WithPlainHTTP()); err == nil || !strings.Contains(err.Error(), "manifest digest") {
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

// TestLookupSkipsNestedIndex: Lookup picks the manifest Convert converted,
// not a nested index listed first for the same platform.
func TestLookupSkipsNestedIndex(t *testing.T) {
	host := testutil.Registry(t)
	amd := platformImage(t, "amd64", "x86")
	amdPlatform := &v1.Platform{OS: "linux", Architecture: "amd64"}
	nested := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: amdPlatform}})
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: nested, Descriptor: v1.Descriptor{Platform: amdPlatform}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: amdPlatform}},
	)
	ref := host + "/nested:v1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rs, err := Convert(ctx, ref, WithPlainHTTP(), WithWorkDir(t.TempDir()))
	if err != nil || len(rs) != 1 {
		t.Fatalf("Convert: %+v, %v", rs, err)
	}
	a, err := artifact.Lookup(ctx, ref, artifact.WithPlainHTTP(), artifact.WithPlatform(*amdPlatform))
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := amd.Digest(); a.Subject.Digest != d || a.Descriptor.Digest != rs[0].Artifact {
		t.Errorf("Lookup found artifact %s of %s, want %s of the image manifest %s", a.Descriptor.Digest, a.Subject.Digest, rs[0].Artifact, d)
	}
}

// TestConvertDockerConfigCredentials uses credentials from a docker config
// file, as the default keychain finds them.
func TestConvertDockerConfigCredentials(t *testing.T) {
	reg := testutil.NewRegistry()
	host := testutil.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "sluice" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`, http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("sluice:s3cret"))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	ref := pushImage(t, host, "private:v1", layerOf(t, []entry{{name: "secret", body: "42"}}))
	convertOne(t, ref)
	if _, err := artifact.Lookup(context.Background(), ref, artifact.WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
}
