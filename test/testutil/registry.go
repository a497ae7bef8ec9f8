package testutil

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// NewRegistry returns go-containerregistry's in-process OCI registry with
// the referrers API (which sluice artifacts are found through) and its
// request log discarded.
func NewRegistry() http.Handler {
	return registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
}

// Serve serves h, a registry or a handler wrapping one, on a loopback port
// until the test ends, and returns its host:port (plain HTTP).
func Serve(t testing.TB, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// Registry serves a NewRegistry until the test ends and returns its
// host:port.
func Registry(t testing.TB) string {
	t.Helper()
	return Serve(t, NewRegistry())
}
