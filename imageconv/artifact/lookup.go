package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

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
	// Verdict says why the artifact was trusted.
	Verdict Verdict
	// Rejected lists the other sluice artifacts of the subject and why
	// they were not used.
	Rejected []Rejection
}

// maxIndexBlob bounds the index blob Lookup reads: 1 TiB in 4 KiB chunks
// would be 12 GiB; refuse absurd ones.
const maxIndexBlob = 64 << 20

// Lookup finds the sluice artifact of image (for a multi-platform image,
// of the platform given by WithPlatform) and fetches and decodes its index.
// It returns an error that Is ErrNoArtifact if there is none, ErrBadIndex
// if the artifact is malformed, and a *RegistryError when the registry
// fails.
func Lookup(ctx context.Context, image string, opts ...Option) (*Artifact, error) {
	o := newOptions(opts)
	ref, err := o.parse(image)
	if err != nil {
		return nil, err
	}
	want := registryhosts.Pull
	if _, byTag := ref.(name.Tag); byTag {
		want = registryhosts.Resolve
	}
	var desc *remote.Descriptor
	err = o.onHosts(ctx, ref.Context(), want, func(repo name.Repository, ro []remote.Option) error {
		var err error
		desc, err = remote.Get(sameIdentifier(ref, repo), ro...)
		return err
	})
	if err != nil {
		return nil, registryError(ref.Context().RegistryStr(), fmt.Errorf("fetching %s: %w", image, err))
	}
	subject := desc.Descriptor
	platform := ""
	if desc.MediaType.IsIndex() {
		want := o.lookupPlatform()
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", image, err)
		}
		ms := PlatformManifests(im, []v1.Platform{want})
		if len(ms) == 0 {
			return nil, fmt.Errorf("%s has no manifest for platform %s", image, want.String())
		}
		subject, platform = ms[0], ms[0].Platform.String()
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
	a, err := fetchArtifact(ctx, repo, subject, platform, o)
	if err != nil {
		return nil, registryError(repo.RegistryStr(), err)
	}
	return a, nil
}

func fetchArtifact(ctx context.Context, repo name.Repository, subject v1.Descriptor, platform string, o *options) (*Artifact, error) {
	var im *v1.IndexManifest
	err := o.onHosts(ctx, repo, o.referrersCapability(), func(r name.Repository, ro []remote.Option) error {
		refs, err := remote.Referrers(r.Digest(subject.Digest.String()), append(ro, remote.WithFilter("artifactType", ArtifactType))...)
		if err != nil {
			return err
		}
		im, err = refs.IndexManifest()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing referrers of %s@%s: %w", repo, subject.Digest, err)
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
	if err := o.checkSize(repo, subject.Digest, cands); err != nil {
		return nil, err
	}
	// Listed in digest order so that messages are stable; the order never
	// decides which artifact is used.
	sort.Slice(cands, func(i, j int) bool { return cands[i].Digest.String() < cands[j].Digest.String() })
	var (
		chosen   *Artifact
		rejected []Rejection
		trusted  int
	)
	for _, c := range cands {
		a, err := readArtifact(ctx, repo, c, subject, platform, o)
		if err == nil {
			a.Verdict, err = o.trust(ctx, repo, a.Descriptor)
		}
		if err != nil {
			if registryFailed(err) {
				return nil, err // the registry, not the artifact, is at fault
			}
			rejected = append(rejected, Rejection{Descriptor: c, Err: err})
			continue
		}
		trusted++
		if chosen == nil {
			chosen = a
		} else {
			rejected = append(rejected, Rejection{Descriptor: c, Err: ErrAmbiguous})
		}
	}
	if trusted != 1 {
		// None, or several: nothing says which one is the image's.
		if chosen != nil {
			rejected = append(rejected, Rejection{Descriptor: chosen.Descriptor, Err: ErrAmbiguous})
		}
		return nil, selectionError(repo, subject.Digest, rejected, trusted, o.verifier != nil)
	}
	chosen.Rejected = rejected
	return chosen, nil
}

// readArtifact fetches and checks the artifact manifest c, which claims
// subject, and its index blob.
func readArtifact(ctx context.Context, repo name.Repository, c, subject v1.Descriptor, platform string, o *options) (*Artifact, error) {
	a := &Artifact{Repo: repo, Descriptor: c, Subject: subject, Platform: platform}
	var desc *remote.Descriptor
	err := o.onHosts(ctx, repo, registryhosts.Pull, func(r name.Repository, ro []remote.Option) error {
		var err error
		desc, err = remote.Get(r.Digest(c.Digest.String()), ro...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("fetching artifact manifest %s: %w", c.Digest, err)
	}
	if Digest(desc.Manifest) != c.Digest {
		return nil, fmt.Errorf("artifact %s: %w: the registry served a manifest of digest %s", c.Digest, ErrBadIndex, Digest(desc.Manifest))
	}
	var m manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, fmt.Errorf("artifact %s: %w: %v", c.Digest, ErrBadIndex, err)
	}
	// A referrers list (above all the tag schema's, which anyone with push
	// rights writes) can name any manifest: only one whose own subject is
	// this image is for this image.
	if m.Subject == nil || m.Subject.Digest != subject.Digest {
		return nil, fmt.Errorf("artifact %s: %w: its subject is %v, not %s", c.Digest, ErrWrongSubject, subjectDigest(m.Subject), subject.Digest)
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
		return nil, fmt.Errorf("artifact %s: %w: it lacks an index or data blob", c.Digest, ErrBadIndex)
	}
	if indexDesc.Size > maxIndexBlob {
		return nil, fmt.Errorf("artifact %s: %w: index blob of %d bytes", c.Digest, ErrBadIndex, indexDesc.Size)
	}
	b, err := fetchBlob(ctx, repo, *indexDesc, o)
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

// fetchBlob reads the blob d (up to one byte more than its size) from a
// host that can pull it.
func fetchBlob(ctx context.Context, repo name.Repository, d v1.Descriptor, o *options) (b []byte, err error) {
	err = o.onHosts(ctx, repo, registryhosts.Pull, func(r name.Repository, ro []remote.Option) error {
		l, err := remote.Layer(r.Digest(d.Digest.String()), ro...)
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err = io.ReadAll(io.LimitReader(rc, d.Size+1))
		return err
	})
	return b, err
}

// sameIdentifier is ref (a tag or a digest) in repo.
func sameIdentifier(ref name.Reference, repo name.Repository) name.Reference {
	if _, byTag := ref.(name.Tag); byTag {
		return repo.Tag(ref.Identifier())
	}
	return repo.Digest(ref.Identifier())
}

func subjectDigest(d *v1.Descriptor) any {
	if d == nil {
		return "none"
	}
	return d.Digest
}
