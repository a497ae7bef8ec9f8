package signature

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/sign"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// Media types of a stored signature.
const (
	// BundleMediaType is the sigstore bundle's, the signature manifest's
	// artifact type and its one layer's media type.
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	// annotationContent says what the bundle holds, as cosign writes it.
	annotationContent = "dev.sigstore.bundle.content"
)

// maxBundle bounds the bundle blob a verifier reads.
const maxBundle = 1 << 20

var emptyJSON = []byte("{}")

// manifest is the signature's OCI manifest.
type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Sign signs the artifact manifest desc in repo with key and stores the
// signature in repo as a referrer of it. It fetches the manifest first and
// checks its digest, so what is signed is what desc names.
func Sign(ctx context.Context, repo name.Repository, desc v1.Descriptor, key *PrivateKey, opts ...artifact.Option) (v1.Descriptor, error) {
	ropts := artifact.RemoteOptions(ctx, opts...)
	got, err := remote.Get(repo.Digest(desc.Digest.String()), ropts...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("fetching artifact manifest %s: %w", desc.Digest, err)
	}
	if artifact.Digest(got.Manifest) != desc.Digest {
		return v1.Descriptor{}, fmt.Errorf("artifact manifest %s: the registry served other bytes", desc.Digest)
	}
	b, err := sign.Bundle(&sign.PlainData{Data: got.Manifest}, keypair{key}, sign.BundleOptions{Context: ctx})
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("signing %s: %w", desc.Digest, err)
	}
	bundleJSON, err := protojsonMarshal(b)
	if err != nil {
		return v1.Descriptor{}, err
	}
	subject := v1.Descriptor{MediaType: got.MediaType, Digest: desc.Digest, Size: int64(len(got.Manifest)), ArtifactType: artifact.ArtifactType}
	layer := v1.Descriptor{MediaType: BundleMediaType, Digest: artifact.Digest(bundleJSON), Size: int64(len(bundleJSON))}
	// The config's media type repeats the artifact type, as the artifact
	// manifest's does: registries that predate OCI 1.1 (and
	// go-containerregistry's) report it as the referrer's artifactType.
	config := v1.Descriptor{MediaType: BundleMediaType, Digest: artifact.Digest(emptyJSON), Size: int64(len(emptyJSON))}
	raw, err := json.Marshal(manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1, ArtifactType: BundleMediaType,
		Config: config, Layers: []v1.Descriptor{layer}, Subject: &subject,
		Annotations: map[string]string{annotationContent: "message-signature"},
	})
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, bl := range []struct {
		d v1.Descriptor
		b []byte
	}{{config, emptyJSON}, {layer, bundleJSON}} {
		if err := remote.WriteLayer(repo, staticBlob{bl.d, bl.b}, ropts...); err != nil {
			return v1.Descriptor{}, fmt.Errorf("pushing signature blob %s to %s: %w", bl.d.Digest, repo, err)
		}
	}
	sigDigest := artifact.Digest(raw)
	if err := remote.Put(repo.Digest(sigDigest.String()), rawManifest(raw), ropts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("pushing the signature of %s to %s: %w", desc.Digest, repo, err)
	}
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: sigDigest, Size: int64(len(raw)), ArtifactType: BundleMediaType}, nil
}

// staticBlob is a v1.Layer over bytes, for remote.WriteLayer.
type staticBlob struct {
	d v1.Descriptor
	b []byte
}

func (s staticBlob) Digest() (v1.Hash, error)             { return s.d.Digest, nil }
func (s staticBlob) DiffID() (v1.Hash, error)             { return s.d.Digest, nil }
func (s staticBlob) Size() (int64, error)                 { return s.d.Size, nil }
func (s staticBlob) MediaType() (types.MediaType, error)  { return s.d.MediaType, nil }
func (s staticBlob) Uncompressed() (io.ReadCloser, error) { return s.Compressed() }
func (s staticBlob) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(s.b)), nil
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

var timeZero time.Time

func protojsonMarshal(pb *protobundle.Bundle) ([]byte, error) {
	b, err := bundle.NewBundle(pb)
	if err != nil {
		return nil, fmt.Errorf("signature bundle: %w", err)
	}
	return b.MarshalJSON()
}
