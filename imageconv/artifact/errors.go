package artifact

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

var (
	// ErrNoArtifact means the image has no sluice artifact.
	ErrNoArtifact = errors.New("no sluice artifact")
	// ErrRegistryUnreachable means the registry could not be reached or
	// answered with a server error: refused, reset, unresolvable, timed
	// out, 5xx. Trying again later may work.
	ErrRegistryUnreachable = errors.New("registry unreachable")
	// ErrRegistryDenied means the registry refused the credentials
	// (401 or 403).
	ErrRegistryDenied = errors.New("registry denied access")
	// ErrSmallImage means every artifact of the image says its flattened
	// image is smaller than WithMinImageSize's bound: not worth streaming.
	ErrSmallImage = errors.New("image smaller than the minimum to stream")
)

// RegistryError is a failed exchange with a registry. It Is
// ErrRegistryUnreachable or ErrRegistryDenied when the failure is one of
// those.
type RegistryError struct {
	// Registry is the registry's host[:port].
	Registry string
	Err      error
}

func (e *RegistryError) Error() string { return "registry " + e.Registry + ": " + e.Err.Error() }
func (e *RegistryError) Unwrap() error { return e.Err }

func (e *RegistryError) Is(target error) bool {
	var terr *transport.Error
	status := 0
	if errors.As(e.Err, &terr) {
		status = terr.StatusCode
	}
	switch target {
	case ErrRegistryUnreachable:
		return unreachable(e.Err) || status >= 500
	case ErrRegistryDenied:
		return status == http.StatusUnauthorized || status == http.StatusForbidden
	}
	return false
}

// unreachable reports network failures: refused, reset, unresolvable,
// timed out, cut short.
func unreachable(err error) bool {
	var (
		op  *net.OpError
		dns *net.DNSError
	)
	return errors.As(err, &op) || errors.As(err, &dns) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF)
}

// registryError wraps err, a failure of a request to registry, as a
// RegistryError, unless it says what the artifact is (no artifact, bad
// index) or already names the registry.
func registryError(registry string, err error) error {
	var rerr *RegistryError
	if err == nil || errors.Is(err, ErrNoArtifact) || errors.Is(err, ErrBadIndex) || errors.Is(err, ErrSmallImage) || errors.As(err, &rerr) {
		return err
	}
	return &RegistryError{Registry: registry, Err: err}
}

// registryFailed reports whether err is the registry's failure (down,
// denied), not the artifact's.
func registryFailed(err error) bool {
	var rerr *RegistryError
	if errors.As(err, &rerr) {
		return errors.Is(rerr, ErrRegistryUnreachable) || errors.Is(rerr, ErrRegistryDenied)
	}
	probe := &RegistryError{Err: err}
	return probe.Is(ErrRegistryUnreachable) || probe.Is(ErrRegistryDenied)
}
