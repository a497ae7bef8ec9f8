package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types and annotations of the artifact (FORMAT.md).
const (
	ArtifactType     = "application/vnd.sluice.image.v1"
	IndexMediaType   = "application/vnd.sluice.index.v1"
	DataMediaType    = "application/vnd.sluice.chunks.v1.zstd"
	ProfileMediaType = "application/vnd.sluice.profile.v1"

	AnnotationVersion   = "dev.sluice.format.version"
	AnnotationImageSize = "dev.sluice.image.size"
	AnnotationChunkSize = "dev.sluice.chunk.size"
	AnnotationPlatform  = "dev.sluice.platform"
)

// emptyJSON is the artifact's config blob, described by emptyConfig. The
// config's media type is the artifact type too: registries that predate
// OCI 1.1 report it as the referrer's artifactType.
var (
	emptyJSON   = []byte("{}")
	emptyConfig = v1.Descriptor{MediaType: ArtifactType, Digest: Digest(emptyJSON), Size: int64(len(emptyJSON))}
)

// Digest returns the sha256 digest of b.
func Digest(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// manifest is an OCI image manifest with the fields artifacts use; our own
// struct so the serialisation (and so the digest) is ours to keep stable.
type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Subject       *v1.Descriptor    `json:"subject,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Manifest is an artifact's manifest, ready to push.
type Manifest struct {
	// Raw is the manifest as pushed; Digest is its sha256.
	Raw    []byte
	Digest v1.Hash
	// Index is the index blob the manifest names, Data the data blob's
	// descriptor.
	Index     []byte
	IndexDesc v1.Descriptor
	Data      v1.Descriptor
}

// NewManifest lays out the artifact of the flattened image ix describes:
// its encoded index, the data blob data, and subject, the source image
// manifest (for a multi-platform image, the platform's manifest; platform
// is "os/arch[/variant]" or ""). The result is deterministic: the same
// inputs give the same digest.
func NewManifest(ix *Index, data, subject v1.Descriptor, platform string) (*Manifest, error) {
	index, err := ix.MarshalBinary()
	if err != nil {
		return nil, err
	}
	out := &Manifest{
		Index:     index,
		IndexDesc: v1.Descriptor{MediaType: IndexMediaType, Size: int64(len(index)), Digest: Digest(index)},
		Data:      data,
	}
	out.Data.MediaType = DataMediaType
	subject.Annotations, subject.Platform, subject.URLs, subject.Data = nil, nil, nil, nil
	m := manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        emptyConfig,
		Layers:        []v1.Descriptor{out.IndexDesc, out.Data},
		Subject:       &subject,
		Annotations: map[string]string{
			AnnotationVersion:   strconv.Itoa(IndexVersion),
			AnnotationImageSize: strconv.FormatInt(ix.ImageSize, 10),
			AnnotationChunkSize: strconv.FormatInt(ix.ChunkSize, 10),
		},
	}
	if platform != "" {
		m.Annotations[AnnotationPlatform] = platform
	}
	if out.Raw, err = json.Marshal(m); err != nil {
		return nil, err
	}
	out.Digest = Digest(out.Raw)
	return out, nil
}
