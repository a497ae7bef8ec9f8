package source

import (
	"errors"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
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
	ReasonAmbiguous    = "several artifacts, none trusted"
	ReasonSeveral      = "several trusted artifacts"
	ReasonUntrusted    = "no trusted artifact"
	ReasonWrongSubject = "artifact not for this image"
	ReasonUnreachable  = "registry unreachable"
	ReasonDenied       = "registry denied access"
	ReasonHostsConfig  = "bad registry host config"
	ReasonSmall        = "image smaller than stream_min_size"
	ReasonOther        = "artifact lookup failed"
)

// Reason returns the label of an error from Open: why the image cannot be
// streamed.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrBadReference):
		return ReasonBadReference
	case errors.Is(err, registryhosts.ErrBadConfig):
		return ReasonHostsConfig
	case errors.Is(err, artifact.ErrNoArtifact):
		return ReasonNoArtifact
	case errors.Is(err, artifact.ErrSmallImage):
		return ReasonSmall
	case errors.Is(err, artifact.ErrAmbiguous):
		return ReasonAmbiguous
	case errors.Is(err, artifact.ErrSeveralTrusted):
		return ReasonSeveral
	case errors.Is(err, artifact.ErrUntrusted):
		return ReasonUntrusted
	case errors.Is(err, artifact.ErrWrongSubject):
		return ReasonWrongSubject
	case errors.Is(err, artifact.ErrBadIndex):
		return ReasonBadIndex
	case errors.Is(err, artifact.ErrRegistryDenied):
		return ReasonDenied
	case errors.Is(err, artifact.ErrRegistryUnreachable):
		return ReasonUnreachable
	}
	return ReasonOther
}

// RejectionReason labels why one artifact of an image was not used (an
// artifact.Rejection's error), for logs and metrics.
func RejectionReason(err error) string {
	switch {
	case errors.Is(err, artifact.ErrAmbiguous):
		return "ambiguous"
	case errors.Is(err, signature.ErrUnsigned):
		return "unsigned"
	case errors.Is(err, signature.ErrOtherManifest):
		return "signature of another manifest"
	case errors.Is(err, signature.ErrCorruptBundle):
		return "corrupt signature"
	case errors.Is(err, signature.ErrUnknownKey):
		return "unknown key"
	case errors.Is(err, artifact.ErrUntrusted):
		return "untrusted"
	case errors.Is(err, artifact.ErrWrongSubject):
		return "not for this image"
	case errors.Is(err, artifact.ErrBadIndex):
		return "corrupt artifact"
	}
	return "other"
}
