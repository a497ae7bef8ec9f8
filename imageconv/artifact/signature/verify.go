package signature

import (
	"bytes"
	"context"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
	sigsig "github.com/sigstore/sigstore/pkg/signature"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// PolicySigned is the Verdict policy of an artifact a Verifier trusted.
const PolicySigned = "signed"

// Why an artifact's signatures did not verify; each wraps
// artifact.ErrUntrusted.
var (
	ErrUnsigned       = fmt.Errorf("%w: no signature", artifact.ErrUntrusted)
	ErrUnknownKey     = fmt.Errorf("%w: not signed by a trusted key", artifact.ErrUntrusted)
	ErrCorruptBundle  = fmt.Errorf("%w: corrupt signature", artifact.ErrUntrusted)
	ErrOtherManifest  = fmt.Errorf("%w: a signature of another manifest", artifact.ErrUntrusted)
	errTooManyBundles = 16 // signatures of one artifact read at most
)

// Verifier trusts the artifacts signed by one of its keys: an
// artifact.Verifier.
type Verifier struct {
	keys []*PublicKey
}

var _ artifact.Verifier = (*Verifier)(nil)

// NewVerifier trusts keys; it needs at least one.
func NewVerifier(keys ...*PublicKey) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("signature verifier: no keys")
	}
	return &Verifier{keys: keys}, nil
}

// LoadVerifier reads the public key files paths (LoadPublicKey) and
// trusts them.
func LoadVerifier(paths ...string) (*Verifier, error) {
	keys := make([]*PublicKey, len(paths))
	for i, p := range paths {
		k, err := LoadPublicKey(p)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	return NewVerifier(keys...)
}

// Keys are the trusted keys.
func (v *Verifier) Keys() []*PublicKey { return v.keys }

// Accepts reports whether verdict was reached with one of v's keys.
func (v *Verifier) Accepts(verdict artifact.Verdict) bool {
	if verdict.Policy != PolicySigned {
		return false
	}
	for _, k := range v.keys {
		if k.ID() == verdict.Key {
			return true
		}
	}
	return false
}

// Verify looks for signatures of the artifact manifest desc among its
// referrers and checks each against every key. One that verifies makes
// the verdict; otherwise the error says what was wrong with each.
func (v *Verifier) Verify(ctx context.Context, repo name.Repository, desc v1.Descriptor, ropts []remote.Option) (artifact.Verdict, error) {
	idx, err := remote.Referrers(repo.Digest(desc.Digest.String()), append(ropts, remote.WithFilter("artifactType", BundleMediaType))...)
	if err != nil {
		return artifact.Verdict{}, fmt.Errorf("listing signatures of %s: %w", desc.Digest, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return artifact.Verdict{}, err
	}
	var problems []error
	n := 0
	for _, d := range im.Manifests {
		if d.ArtifactType != BundleMediaType {
			continue
		}
		if n++; n > errTooManyBundles {
			break
		}
		b, err := fetchBundle(ctx, repo, d, desc.Digest, ropts)
		if err != nil {
			if isRegistryFailure(err) {
				return artifact.Verdict{}, err
			}
			problems = append(problems, fmt.Errorf("signature %s: %w", d.Digest, err))
			continue
		}
		key, err := v.verifyBundle(b, desc.Digest)
		if err != nil {
			problems = append(problems, fmt.Errorf("signature %s: %w", d.Digest, err))
			continue
		}
		return artifact.Verdict{Policy: PolicySigned, Key: key.ID()}, nil
	}
	if len(problems) == 0 {
		return artifact.Verdict{}, ErrUnsigned
	}
	return artifact.Verdict{}, errors.Join(problems...)
}

// fetchBundle reads the bundle of the signature manifest d, which must be
// a referrer of subject.
func fetchBundle(ctx context.Context, repo name.Repository, d v1.Descriptor, subject v1.Hash, ropts []remote.Option) (*bundle.Bundle, error) {
	got, err := remote.Get(repo.Digest(d.Digest.String()), ropts...)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(got.Manifest, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrCorruptBundle, err)
	}
	if m.Subject == nil || m.Subject.Digest != subject {
		return nil, fmt.Errorf("%w: it refers to %v, not to %s", ErrCorruptBundle, subjectOf(m.Subject), subject)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != BundleMediaType || m.Layers[0].Size <= 0 || m.Layers[0].Size > maxBundle {
		return nil, fmt.Errorf("%w: want one bundle layer of at most %d bytes", ErrCorruptBundle, maxBundle)
	}
	l, err := remote.Layer(repo.Digest(m.Layers[0].Digest.String()), ropts...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, maxBundle+1))
	if err != nil {
		if isRegistryFailure(err) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: blob %s: %v", ErrCorruptBundle, m.Layers[0].Digest, err)
	}
	if artifact.Digest(raw) != m.Layers[0].Digest {
		return nil, fmt.Errorf("%w: blob %s does not match its digest", ErrCorruptBundle, m.Layers[0].Digest)
	}
	b := &bundle.Bundle{Bundle: new(protobundle.Bundle)}
	if err := b.UnmarshalJSON(raw); err != nil {
		return nil, fmt.Errorf("%w: blob %s: %v", ErrCorruptBundle, m.Layers[0].Digest, err)
	}
	return b, nil
}

// verifyBundle checks that b is a signature of digest by one of v's keys.
func (v *Verifier) verifyBundle(b *bundle.Bundle, digest v1.Hash) (*PublicKey, error) {
	want, err := hex.DecodeString(digest.Hex)
	if err != nil || digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("artifact digest %s is not sha256", digest)
	}
	if signed := b.GetMessageSignature().GetMessageDigest().GetDigest(); !bytes.Equal(signed, want) {
		return nil, fmt.Errorf("%w: it signs sha256:%x", ErrOtherManifest, signed)
	}
	policy := verify.NewPolicy(verify.WithArtifactDigest("sha256", want), verify.WithKey())
	var last error
	for _, k := range v.keys {
		sv, err := sigsig.LoadVerifier(k.key, crypto.SHA256)
		if err != nil {
			return nil, err
		}
		material := root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) {
			return root.NewExpiringKey(sv, timeZero, timeZero), nil
		})
		verifier, err := verify.NewVerifier(material, verify.WithNoObserverTimestamps())
		if err != nil {
			return nil, err
		}
		if _, err := verifier.Verify(b, policy); err != nil {
			last = err
			continue
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w (%d keys tried): %v", ErrUnknownKey, len(v.keys), last)
}

func subjectOf(d *v1.Descriptor) any {
	if d == nil {
		return "nothing"
	}
	return d.Digest
}

// isRegistryFailure reports whether err is the registry's (down,
// denied), not the signature's.
func isRegistryFailure(err error) bool {
	probe := &artifact.RegistryError{Err: err}
	return errors.Is(probe, artifact.ErrRegistryUnreachable) || errors.Is(probe, artifact.ErrRegistryDenied)
}
