package artifact

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Which artifact of an image is used (FORMAT.md, "Choosing an artifact"):
// anyone with push rights to a repository can attach an artifact to any
// image in it, and the node mounts what the artifact holds. So Lookup
// never chooses by digest order or by any other order: it uses the one
// artifact whose subject is the image and that the Verifier trusts, and
// refuses when there are none or several.
var (
	// ErrAmbiguous means several artifacts of the image are usable and no
	// Verifier says which one to trust.
	ErrAmbiguous = errors.New("several artifacts, none trusted")
	// ErrSeveralTrusted means several artifacts of the image pass the
	// Verifier.
	ErrSeveralTrusted = errors.New("several trusted artifacts")
	// ErrUntrusted means the Verifier trusts no artifact of the image.
	ErrUntrusted = errors.New("no trusted artifact")
	// ErrWrongSubject means an artifact listed among the image's referrers
	// is not for the image: its own subject names another manifest.
	ErrWrongSubject = errors.New("artifact not for this image")
)

// Verdict says why an artifact was trusted. It is kept with a saved
// artifact (Marshal), so that a process serving it later from what it
// saved applies the same trust.
type Verdict struct {
	// Policy is "any" (no Verifier: the one artifact of the image) or
	// "signed".
	Policy string `json:"policy"`
	// Key names the key whose signature verified, under "signed".
	Key string `json:"key,omitempty"`
}

// Verifier decides whether an artifact is trusted, such as by checking its
// signatures against configured keys.
type Verifier interface {
	// Verify returns the verdict on the artifact manifest desc in repo, or
	// an error saying why it is not trusted (wrapping ErrUntrusted), or
	// why the registry could not be asked (a *RegistryError).
	Verify(ctx context.Context, repo name.Repository, desc v1.Descriptor, ropts []remote.Option) (Verdict, error)
	// Accepts reports whether a verdict reached before (and saved) still
	// satisfies this Verifier.
	Accepts(Verdict) bool
}

// WithVerifier trusts only the artifacts v trusts (default: the one
// artifact of an image, unsigned or not).
func WithVerifier(v Verifier) Option { return func(o *options) { o.verifier = v } }

// PolicyAny is the Verdict of an artifact used without a Verifier.
const PolicyAny = "any"

func (o *options) trust(ctx context.Context, repo name.Repository, desc v1.Descriptor) (Verdict, error) {
	if o.verifier == nil {
		return Verdict{Policy: PolicyAny}, nil
	}
	return o.verifier.Verify(ctx, repo, desc, o.remoteOptions(ctx))
}

// Rejection is an artifact of an image that Lookup did not use, and why.
type Rejection struct {
	Descriptor v1.Descriptor
	Err        error
}

// SelectionError says why Lookup used none of an image's artifacts. It Is
// ErrAmbiguous, ErrSeveralTrusted, ErrUntrusted, ErrWrongSubject or
// ErrBadIndex.
type SelectionError struct {
	Repo     name.Repository
	Subject  v1.Hash
	Rejected []Rejection
	err      error
}

func (e *SelectionError) Unwrap() error { return e.err }

func (e *SelectionError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s@%s: %v:", e.Repo, e.Subject, e.err)
	for i, r := range e.Rejected {
		if i > 0 {
			b.WriteString(";")
		}
		fmt.Fprintf(&b, " artifact %s: %v", r.Descriptor.Digest, r.Err)
	}
	return b.String()
}

// selectionError says why none of the candidates is used: several
// usable, else the gravest reason found among the rejected.
func selectionError(repo name.Repository, subject v1.Hash, rejected []Rejection, usable int, verified bool) error {
	e := &SelectionError{Repo: repo, Subject: subject, Rejected: rejected}
	switch {
	case usable > 1 && verified:
		e.err = ErrSeveralTrusted
	case usable > 1:
		e.err = ErrAmbiguous
	case anyRejection(rejected, ErrUntrusted):
		e.err = ErrUntrusted
	case anyRejection(rejected, ErrWrongSubject):
		e.err = ErrWrongSubject
	default:
		e.err = ErrBadIndex
	}
	return e
}

func anyRejection(rs []Rejection, target error) bool {
	for _, r := range rs {
		if errors.Is(r.Err, target) {
			return true
		}
	}
	return false
}
