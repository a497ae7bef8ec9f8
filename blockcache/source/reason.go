package source

import (
	"errors"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// ErrBadReference means an image reference or manifest digest does not
// parse.
var ErrBadReference = errors.New("bad image reference")

// Reasons, as Reason gives them: short, stable labels for logs and
// metrics.
const (
	ReasonBadReference = "bad image reference"
	ReasonNoArtifact   = "no artifact"
	ReasonBadIndex     = "artifact index corrupt"
	ReasonUnreachable  = "registry unreachable"
	ReasonDenied       = "registry denied access"
	ReasonOther        = "artifact lookup failed"
)

// Reason returns the label of an error from Open: why the image cannot be
// streamed.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrBadReference):
		return ReasonBadReference
	case errors.Is(err, artifact.ErrNoArtifact):
		return ReasonNoArtifact
	case errors.Is(err, artifact.ErrBadIndex):
		return ReasonBadIndex
	case errors.Is(err, artifact.ErrRegistryDenied):
		return ReasonDenied
	case errors.Is(err, artifact.ErrRegistryUnreachable):
		return ReasonUnreachable
	}
	return ReasonOther
}
