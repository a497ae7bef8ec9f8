package source

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// TestReason: each failure to find an artifact has its label, found with
// errors.Is through the wrapping a lookup adds, and registry failures name
// the registry.
func TestReason(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	reg := func(err error) error { return &artifact.RegistryError{Registry: "registry.example:5000", Err: err} }
	for _, tc := range []struct {
		err    error
		reason string
		is     error
	}{
		{fmt.Errorf("%w for r/app@sha256:x", artifact.ErrNoArtifact), ReasonNoArtifact, artifact.ErrNoArtifact},
		{&artifact.SmallImageError{Image: "r/app@sha256:x", Size: 4 << 20, Min: 16 << 20}, ReasonSmall, artifact.ErrSmallImage},
		{fmt.Errorf("index blob sha256:y: %w: bad magic", artifact.ErrBadIndex), ReasonBadIndex, artifact.ErrBadIndex},
		{fmt.Errorf("%w \"UPPER\": bad", ErrBadReference), ReasonBadReference, ErrBadReference},
		{reg(fmt.Errorf("listing referrers: %w", refused)), ReasonUnreachable, artifact.ErrRegistryUnreachable},
		{reg(&transport.Error{StatusCode: http.StatusServiceUnavailable}), ReasonUnreachable, artifact.ErrRegistryUnreachable},
		{reg(&transport.Error{StatusCode: http.StatusUnauthorized}), ReasonDenied, artifact.ErrRegistryDenied},
		{reg(&transport.Error{StatusCode: http.StatusForbidden}), ReasonDenied, artifact.ErrRegistryDenied},
		{reg(&transport.Error{StatusCode: http.StatusNotFound}), ReasonOther, nil},
		{reg(errors.New("something else")), ReasonOther, nil},
	} {
		wrapped := fmt.Errorf("opening r/app: %w", tc.err)
		if got := Reason(wrapped); got != tc.reason {
			t.Errorf("%v: reason %q, want %q", tc.err, got, tc.reason)
		}
		if tc.is != nil && !errors.Is(wrapped, tc.is) {
			t.Errorf("%v: not errors.Is %v", tc.err, tc.is)
		}
		var rerr *artifact.RegistryError
		if errors.As(tc.err, &rerr) && !strings.Contains(wrapped.Error(), "registry registry.example:5000") {
			t.Errorf("%v: the message does not name the registry", wrapped)
		}
	}
	// A registry error is neither unreachable nor denied unless it says so.
	if err := reg(&transport.Error{StatusCode: http.StatusUnauthorized}); errors.Is(err, artifact.ErrRegistryUnreachable) {
		t.Errorf("401 counts as unreachable")
	}
}
