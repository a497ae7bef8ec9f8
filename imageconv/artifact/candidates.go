package artifact

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Candidate is a manifest listed among an image manifest's sluice
// referrers, as the registry holds it: not yet checked or trusted.
type Candidate struct {
	Descriptor v1.Descriptor
	// Subject is the manifest the candidate's own subject names (the
	// image's, unless it was listed there by someone else).
	Subject v1.Hash
	// ChunkSize and Platform are what its annotations say.
	ChunkSize int64
	Platform  string
}

// Candidates lists the sluice artifacts the registry holds for the image
// manifest subject in repo, in digest order.
func Candidates(ctx context.Context, repo name.Repository, subject v1.Hash, opts ...Option) ([]Candidate, error) {
	o := newOptions(opts)
	ropts := o.remoteOptions(ctx)
	refs, err := remote.Referrers(repo.Digest(subject.String()), append(ropts, remote.WithFilter("artifactType", ArtifactType))...)
	if err != nil {
		return nil, registryError(repo.RegistryStr(), fmt.Errorf("listing referrers of %s@%s: %w", repo, subject, err))
	}
	im, err := refs.IndexManifest()
	if err != nil {
		return nil, err
	}
	var cs []Candidate
	for _, d := range im.Manifests {
		if d.ArtifactType != ArtifactType {
			continue
		}
		got, err := remote.Get(repo.Digest(d.Digest.String()), ropts...)
		if err != nil {
			return nil, registryError(repo.RegistryStr(), fmt.Errorf("fetching artifact manifest %s: %w", d.Digest, err))
		}
		var m manifest
		if err := json.Unmarshal(got.Manifest, &m); err != nil {
			return nil, fmt.Errorf("artifact %s: %w: %v", d.Digest, ErrBadIndex, err)
		}
		c := Candidate{Descriptor: d, Platform: m.Annotations[AnnotationPlatform]}
		if m.Subject != nil {
			c.Subject = m.Subject.Digest
		}
		if c.ChunkSize, err = strconv.ParseInt(m.Annotations[AnnotationChunkSize], 10, 64); err != nil {
			return nil, fmt.Errorf("artifact %s: %w: chunk size annotation %q", d.Digest, ErrBadIndex, m.Annotations[AnnotationChunkSize])
		}
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Descriptor.Digest.String() < cs[j].Descriptor.Digest.String() })
	return cs, nil
}

// Pinned is a Verifier that trusts exactly one artifact, by digest: for
// acting on an artifact a person chose.
type Pinned v1.Hash

func (p Pinned) Verify(_ context.Context, _ name.Repository, d v1.Descriptor, _ []remote.Option) (Verdict, error) {
	if d.Digest == v1.Hash(p) {
		return Verdict{Policy: "pinned", Key: d.Digest.String()}, nil
	}
	return Verdict{}, fmt.Errorf("%w: not the artifact asked for (%s)", ErrUntrusted, v1.Hash(p))
}

func (p Pinned) Accepts(v Verdict) bool { return v.Policy == "pinned" && v.Key == v1.Hash(p).String() }
