package blockcache

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Backoff is the retry policy for transient registry errors: connection
// errors, 5xx, 429 and truncated bodies. Delays grow from Initial by Factor
// up to Max, each randomised by ±Jitter (a fraction). Attempts bounds the
// tries of one range (0: no bound, retry until the caller's context ends,
// which for reads is the per-read deadline).
type Backoff struct {
	Initial  time.Duration
	Max      time.Duration
	Factor   float64
	Jitter   float64
	Attempts int
}

// DefaultBackoff retries 100 ms, 200 ms, ... up to 5 s apart, until the
// read's deadline.
var DefaultBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Factor: 2, Jitter: 0.2}

// delay returns how long to wait before retry number attempt (0-based).
func (b Backoff) delay(attempt int) time.Duration {
	d := float64(b.Initial)
	for range attempt {
		d *= max(b.Factor, 1)
		if d >= float64(b.Max) {
			break
		}
	}
	d = min(d, float64(b.Max))
	if b.Jitter > 0 {
		d *= 1 + b.Jitter*(2*rand.Float64()-1)
	}
	return time.Duration(max(d, 0))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// statusError is an unexpected HTTP status from the registry or storage.
type statusError struct {
	code       int
	retryAfter time.Duration
}

func (e *statusError) Error() string { return "HTTP status " + strconv.Itoa(e.code) }

func newStatusError(resp *http.Response) *statusError {
	e := &statusError{code: resp.StatusCode}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.retryAfter = time.Duration(s) * time.Second
	}
	return e
}

// transient reports whether err is worth retrying.
func transient(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return retryableStatus(se.code)
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return retryableStatus(te.StatusCode)
	}
	// A certificate the client rejects will not become acceptable.
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		verify    *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return false
	}
	var perm permanentError
	// Everything else reaching here is a connection error, a timeout of one
	// attempt, or a short body: retry.
	return !errors.As(err, &perm)
}

func retryableStatus(code int) bool {
	return code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500
}

// permanentError marks an error no retry can fix (a malformed response).
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }
