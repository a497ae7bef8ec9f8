package signature_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
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
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/test/testutil"
)

// keyPair writes a cosign-format key pair into dir and loads it.
func keyPair(t *testing.T, dir, name string) (*signature.PrivateKey, *signature.PublicKey) {
	t.Helper()
	t.Setenv(signature.PasswordEnv, "pw-"+name)
	priv, pub, err := signature.GenerateKey([]byte("pw-" + name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(priv, []byte("ENCRYPTED SIGSTORE PRIVATE KEY")) {
		t.Fatalf("the private key is not in cosign's encrypted format:\n%s", priv)
	}
	pp, kp := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	if err := os.WriteFile(pp, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kp, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := signature.LoadPrivateKey(pp)
	if err != nil {
		t.Fatal(err)
	}
	p, err := signature.LoadPublicKey(kp)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID() != k.Public().ID() {
		t.Fatalf("public key %s, private key's %s", p.ID(), k.Public().ID())
	}
	return k, p
}

// converted pushes a one-layer image to host/repo and converts it,
// signed by key if given; it returns the image reference and the
// artifact's descriptor.
func converted(t *testing.T, host, repo, content string, key *signature.PrivateKey) (string, v1.Descriptor) {
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
	opts := []imageconv.Option{imageconv.WithPlainHTTP(), imageconv.WithWorkDir(t.TempDir())}
	if key != nil {
		opts = append(opts, imageconv.WithSignKey(key))
	}
	rs, err := imageconv.Convert(context.Background(), ref.String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if (key != nil) != (rs[0].Signature != v1.Hash{}) {
		t.Fatalf("signed with %v, signature %v", key != nil, rs[0].Signature)
	}
	return ref.String(), v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: rs[0].Artifact}
}

func verify(t *testing.T, v *signature.Verifier, image string, desc v1.Descriptor) (artifact.Verdict, error) {
	t.Helper()
	ref, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	return v.Verify(ctx, ref.Context(), desc, artifact.RemoteOptions(ctx))
}

// TestSignVerify: a signed artifact verifies with its key and not with
// another; an unsigned one does not; the Lookup of an image whose one
// artifact is signed trusts it, with the key in the verdict.
func TestSignVerify(t *testing.T) {
	host := testutil.Registry(t)
	dir := t.TempDir()
	key, pub := keyPair(t, dir, "ci")
	_, other := keyPair(t, dir, "other")
	t.Setenv(signature.PasswordEnv, "pw-ci")

	signedRef, signed := converted(t, host, "signed", "signed\n", key)
	unsignedRef, unsigned := converted(t, host, "unsigned", "unsigned\n", nil)

	v, err := signature.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	verdict, err := verify(t, v, signedRef, signed)
	if err != nil || verdict.Policy != signature.PolicySigned || verdict.Key != pub.ID() || !v.Accepts(verdict) {
		t.Fatalf("signed artifact: %+v, %v", verdict, err)
	}
	if _, err := verify(t, v, unsignedRef, unsigned); !errors.Is(err, signature.ErrUnsigned) || !errors.Is(err, artifact.ErrUntrusted) {
		t.Errorf("unsigned artifact: %v, want ErrUnsigned", err)
	}
	vOther, _ := signature.NewVerifier(other)
	if _, err := verify(t, vOther, signedRef, signed); !errors.Is(err, signature.ErrUnknownKey) {
		t.Errorf("signed by an unknown key: %v, want ErrUnknownKey", err)
	}
	if vOther.Accepts(verdict) || vOther.Accepts(artifact.Verdict{Policy: artifact.PolicyAny}) {
		t.Error("a verifier accepts a verdict reached with another key, or none")
	}

	a, err := artifact.Lookup(context.Background(), signedRef, artifact.WithPlainHTTP(), artifact.WithVerifier(v))
	if err != nil || a.Verdict.Key != pub.ID() {
		t.Fatalf("Lookup of the signed image: %+v, %v", a, err)
	}
	_, err = artifact.Lookup(context.Background(), unsignedRef, artifact.WithPlainHTTP(), artifact.WithVerifier(v))
	if !errors.Is(err, artifact.ErrUntrusted) || !strings.Contains(err.Error(), unsigned.Digest.String()) {
		t.Errorf("Lookup of the unsigned image under a verifier: %v, want ErrUntrusted naming %s", err, unsigned.Digest)
	}
}

// TestCorruptOrMovedSignature: a signature blob that is not a bundle is
// refused as corrupt; a valid signature of one artifact attached to
// another does not make the other trusted.
func TestCorruptOrMovedSignature(t *testing.T) {
	host := testutil.Registry(t)
	key, pub := keyPair(t, t.TempDir(), "ci")
	v, _ := signature.NewVerifier(pub)
	signedRef, signed := converted(t, host, "signed", "signed\n", key)
	targetRef, target := converted(t, host, "target", "target\n", nil)
	sref, _ := name.ParseReference(signedRef, name.Insecure)
	tref, _ := name.ParseReference(targetRef, name.Insecure)

	// The signed artifact's signature manifest, re-pointed at target.
	idx, err := remote.Referrers(sref.Context().Digest(signed.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 {
		t.Fatalf("%d referrers of the signed artifact, want its signature", len(im.Manifests))
	}
	sig, err := remote.Get(sref.Context().Digest(im.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(sig.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	layer := m["layers"].([]any)[0].(map[string]any)
	bundleDigest := layer["digest"].(string)
	copyBlob := func(dgst string, into name.Repository) {
		l, err := remote.Layer(sref.Context().Digest(dgst))
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(into, l); err != nil {
			t.Fatal(err)
		}
	}
	copyBlob(bundleDigest, tref.Context())
	copyBlob(m["config"].(map[string]any)["digest"].(string), tref.Context())
	m["subject"] = map[string]any{"mediaType": string(types.OCIManifestSchema1), "digest": target.Digest.String(), "size": sizeOf(t, targetRef, target)}
	putManifest(t, tref.Context(), m)
	if _, err := verify(t, v, targetRef, target); !errors.Is(err, signature.ErrOtherManifest) || !errors.Is(err, artifact.ErrUntrusted) {
		t.Errorf("a signature moved to another artifact: %v, want it refused as signing another manifest", err)
	}

	// A signature manifest whose bundle is garbage.
	garbage := []byte(`{"mediaType": "not a bundle"`)
	gl := staticLayer(garbage)
	if err := remote.WriteLayer(tref.Context(), gl); err != nil {
		t.Fatal(err)
	}
	gd, _ := gl.Digest()
	layer["digest"], layer["size"] = gd.String(), len(garbage)
	m["annotations"] = map[string]any{"n": "2"}
	putManifest(t, tref.Context(), m)
	_, err = verify(t, v, targetRef, target)
	if !errors.Is(err, signature.ErrCorruptBundle) || !strings.Contains(err.Error(), gd.String()) {
		t.Errorf("a corrupt bundle: %v, want ErrCorruptBundle naming %s", err, gd)
	}
}

func sizeOf(t *testing.T, image string, d v1.Descriptor) int64 {
	ref, _ := name.ParseReference(image, name.Insecure)
	got, err := remote.Get(ref.Context().Digest(d.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(got.Manifest))
}

func putManifest(t *testing.T, repo name.Repository, m map[string]any) {
	t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(repo.Digest(artifact.Digest(raw).String()), rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

func staticLayer(b []byte) v1.Layer {
	l, _ := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(signature.BundleMediaType))
	return l
}
