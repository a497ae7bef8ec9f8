package imageconv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types of the artifact (FORMAT.md).
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

// ErrNoArtifact means the image has no sluice artifact.
var ErrNoArtifact = errors.New("no sluice artifact")

var emptyJSON = []byte("{}")

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

// Artifact is a sluice artifact found in a registry.
type Artifact struct {
	// Repo is the repository holding the artifact and its source image.
	Repo name.Repository
	// Descriptor is the artifact manifest's descriptor.
	Descriptor v1.Descriptor
	// Subject is the source image manifest the artifact was made from.
	Subject v1.Descriptor
	// Platform is the source's platform, if it was known.
	Platform string
	// Index is the decoded index blob.
	Index *Index
	// Data is the data blob's descriptor; Profile the optional profile's.
	Data    v1.Descriptor
	Profile *v1.Descriptor
	// Others counts further sluice artifacts of the same subject.
	Others int
}

// built is one converted platform, ready to push.
type built struct {
	platform string
	subject  v1.Descriptor
	index    []byte
	dataPath string
	data     v1.Descriptor
	manifest []byte
	digest   v1.Hash
}

func buildManifest(b *built, ix *Index) error {
	indexDesc := v1.Descriptor{MediaType: IndexMediaType, Size: int64(len(b.index))}
	h, _, err := v1.SHA256(bytes.NewReader(b.index))
	if err != nil {
		return err
	}
	indexDesc.Digest = h
	emptyDigest, _, _ := v1.SHA256(bytes.NewReader(emptyJSON))
	subject := b.subject
	subject.Annotations, subject.Platform, subject.URLs, subject.Data = nil, nil, nil, nil
	m := manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		// The config's media type is the artifact type too: registries that
		// predate OCI 1.1 report it as the referrer's artifactType.
		Config:  v1.Descriptor{MediaType: ArtifactType, Digest: emptyDigest, Size: 2},
		Layers:  []v1.Descriptor{indexDesc, b.data},
		Subject: &subject,
		Annotations: map[string]string{
			AnnotationVersion:   strconv.Itoa(IndexVersion),
			AnnotationImageSize: strconv.FormatInt(ix.ImageSize, 10),
			AnnotationChunkSize: strconv.FormatInt(ix.ChunkSize, 10),
		},
	}
	if b.platform != "" {
		m.Annotations[AnnotationPlatform] = b.platform
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b.manifest = raw
	b.digest, _, err = v1.SHA256(bytes.NewReader(raw))
	return err
}

// blob is a v1.Layer over bytes or a file, for remote.WriteLayer.
type blob struct {
	desc  v1.Descriptor
	bytes []byte
	path  string
	ctx   context.Context
	p     Progress
}

func (b *blob) Digest() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b *blob) DiffID() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b *blob) Size() (int64, error)                 { return b.desc.Size, nil }
func (b *blob) MediaType() (types.MediaType, error)  { return b.desc.MediaType, nil }
func (b *blob) Uncompressed() (io.ReadCloser, error) { return b.Compressed() }
func (b *blob) Compressed() (io.ReadCloser, error) {
	if b.path == "" {
		return io.NopCloser(bytes.NewReader(b.bytes)), nil
	}
	f, err := os.Open(b.path)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{&progressReader{ctx: b.ctx, r: f, p: b.p}, f}, nil
}

type rawManifest struct{ raw []byte }

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// push uploads the blobs, then the manifest, so a reader never sees a
// manifest whose blobs are missing.
func push(ctx context.Context, repo name.Repository, b *built, o *options) error {
	ropts := o.remoteOptions(ctx)
	emptyDigest, _, _ := v1.SHA256(bytes.NewReader(emptyJSON))
	var m manifest
	if err := json.Unmarshal(b.manifest, &m); err != nil {
		return err
	}
	blobs := []*blob{
		{desc: v1.Descriptor{MediaType: ArtifactType, Digest: emptyDigest, Size: 2}, bytes: emptyJSON},
		{desc: m.Layers[0], bytes: b.index},
		{desc: b.data, path: b.dataPath, ctx: ctx, p: o.progress},
	}
	o.progress.Phase("pushing "+b.platform, b.data.Size)
	for _, bl := range blobs {
		if err := remote.WriteLayer(repo, bl, ropts...); err != nil {
			return fmt.Errorf("pushing blob %s to %s: %w", bl.desc.Digest, repo, err)
		}
	}
	if err := remote.Put(repo.Digest(b.digest.String()), rawManifest{b.manifest}, ropts...); err != nil {
		return fmt.Errorf("pushing artifact manifest to %s: %w", repo, err)
	}
	return nil
}

// Lookup finds the sluice artifact of image (for a multi-platform image,
// of the platform chosen by WithPlatforms, default linux/amd64) and fetches
// and decodes its index. It returns ErrNoArtifact if there is none.
func Lookup(ctx context.Context, image string, opts ...Option) (*Artifact, error) {
	o := newOptions(opts)
	ref, err := o.parse(image)
	if err != nil {
		return nil, err
	}
	ropts := o.remoteOptions(ctx)
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", image, err)
	}
	subject := desc.Descriptor
	platform := ""
	if desc.MediaType.IsIndex() {
		want := o.lookupPlatform()
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		found := false
		for _, m := range im.Manifests {
			if m.Platform != nil && m.Platform.Satisfies(want) {
				subject, platform, found = m, m.Platform.String(), true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%s has no manifest for platform %s", image, want.String())
		}
	}
	return lookupSubject(ctx, ref.Context(), subject, platform, o)
}

// LookupManifest finds the sluice artifact of one platform manifest of
// image's repository, given by digest (as containerd's CRI labels give it),
// without resolving image's tag or index. Errors are those of Lookup.
func LookupManifest(ctx context.Context, image, manifestDigest string, opts ...Option) (*Artifact, error) {
	o := newOptions(opts)
	ref, err := o.parse(image)
	if err != nil {
		return nil, err
	}
	h, err := v1.NewHash(manifestDigest)
	if err != nil {
		return nil, fmt.Errorf("manifest digest %q of %s: %w", manifestDigest, image, err)
	}
	return lookupSubject(ctx, ref.Context(), v1.Descriptor{Digest: h}, "", o)
}

func lookupSubject(ctx context.Context, repo name.Repository, subject v1.Descriptor, platform string, o *options) (*Artifact, error) {
	ropts := o.remoteOptions(ctx)
	refs, err := remote.Referrers(repo.Digest(subject.Digest.String()), append(ropts, remote.WithFilter("artifactType", ArtifactType))...)
	if err != nil {
		return nil, fmt.Errorf("listing referrers of %s@%s: %w", repo, subject.Digest, err)
	}
	im, err := refs.IndexManifest()
	if err != nil {
		return nil, err
	}
	var cands []v1.Descriptor
	for _, d := range im.Manifests {
		if d.ArtifactType == ArtifactType {
			cands = append(cands, d)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w for %s@%s", ErrNoArtifact, repo, subject.Digest)
	}
	// Several artifacts (say, converted with other chunk sizes): pick one
	// deterministically.
	sort.Slice(cands, func(i, j int) bool { return cands[i].Digest.String() < cands[j].Digest.String() })
	a := &Artifact{Repo: repo, Descriptor: cands[0], Subject: subject, Platform: platform, Others: len(cands) - 1}
	raw, err := fetchManifest(ctx, repo, cands[0].Digest, o)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("artifact %s: %w: %v", cands[0].Digest, ErrBadIndex, err)
	}
	var indexDesc *v1.Descriptor
	for i := range m.Layers {
		switch m.Layers[i].MediaType {
		case IndexMediaType:
			indexDesc = &m.Layers[i]
		case DataMediaType:
			a.Data = m.Layers[i]
		case ProfileMediaType:
			a.Profile = &m.Layers[i]
		}
	}
	if indexDesc == nil || a.Data.Digest == (v1.Hash{}) {
		return nil, fmt.Errorf("artifact %s: %w: it lacks an index or data blob", cands[0].Digest, ErrBadIndex)
	}
	const maxIndexBlob = 64 << 20 // 1 TiB in 4 KiB chunks would be 12 GiB: refuse absurd ones
	if indexDesc.Size > maxIndexBlob {
		return nil, fmt.Errorf("artifact %s: %w: index blob of %d bytes", cands[0].Digest, ErrBadIndex, indexDesc.Size)
	}
	l, err := remote.Layer(repo.Digest(indexDesc.Digest.String()), ropts...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("fetching index blob %s: %w", indexDesc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, indexDesc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("fetching index blob %s: %w", indexDesc.Digest, err)
	}
	if int64(len(b)) != indexDesc.Size {
		return nil, fmt.Errorf("index blob %s: %w: %d bytes, descriptor says %d", indexDesc.Digest, ErrBadIndex, len(b), indexDesc.Size)
	}
	if a.Index, err = ParseIndex(b); err != nil {
		return nil, fmt.Errorf("index blob %s: %w", indexDesc.Digest, err)
	}
	if a.Index.DataSize != a.Data.Size {
		return nil, fmt.Errorf("index blob %s: %w: data blob is %d bytes, index says %d", indexDesc.Digest, ErrBadIndex, a.Data.Size, a.Index.DataSize)
	}
	return a, nil
}

func fetchManifest(ctx context.Context, repo name.Repository, d v1.Hash, o *options) ([]byte, error) {
	desc, err := remote.Get(repo.Digest(d.String()), o.remoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("fetching artifact manifest %s: %w", d, err)
	}
	return desc.Manifest, nil
}
