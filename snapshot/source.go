package snapshot

import (
	"context"
	"errors"
	"io"
	"strings"
)

// ImageRef names the image being pulled, as containerd's CRI labels do.
type ImageRef struct {
	// Ref is the image reference, e.g. registry.example.com/app:v1.
	Ref string
	// ManifestDigest is the digest of the platform manifest being unpacked.
	ManifestDigest string
}

func (r ImageRef) String() string {
	if r.ManifestDigest == "" {
		return r.Ref
	}
	return r.Ref + "@" + r.ManifestDigest
}

// Source finds and serves the artifacts of streamable images. The agent
// implements it with blockcache/source (artifact lookup, the data, sharing)
// and nbdserver (the export).
type Source interface {
	// Resolve finds the image's artifact and opens an export serving its
	// flattened ext4 image. It returns an error that Is ErrNotStreamable
	// (see NotStreamable) when the image has no usable artifact. Each
	// Stream returned must be closed; the export stays served while at
	// least one Stream of it is open.
	Resolve(ctx context.Context, img ImageRef) (Stream, error)
	// FetchLayer returns the blob of one of the image's layers as stored in
	// its registry (usually compressed), for materializing a placeholder.
	FetchLayer(ctx context.Context, img ImageRef, layerDigest string) (io.ReadCloser, error)
}

// Stream is an open export of one image's flattened filesystem.
type Stream interface {
	// Key identifies the flattened image stably (the artifact digest): the
	// same key is the same ext4 bytes, across processes.
	Key() string
	// Export is where the image is served now. Its name should stay the
	// same for a key across agent restarts (the key itself will do); the
	// socket may change.
	Export() Export
	Close() error
}

// ErrNotStreamable says that an image has no usable artifact; such images
// are pulled the ordinary way (or refused, under PolicyRequire).
var ErrNotStreamable = errors.New("not streamable")

// NotStreamable returns an error that Is ErrNotStreamable, carrying a short
// stable reason (counted in Stats: "no artifact", "artifact index corrupt",
// "registry unreachable") and optionally the error behind it.
func NotStreamable(reason string, err error) error {
	return &notStreamableError{reason: reason, err: err}
}

type notStreamableError struct {
	reason string
	err    error
}

func (e *notStreamableError) Error() string {
	if e.err == nil {
		return e.reason
	}
	return e.reason + ": " + e.err.Error()
}

func (e *notStreamableError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrNotStreamable}
	}
	return []error{ErrNotStreamable, e.err}
}

// Reason returns the short reason of an error from NotStreamable, or, for
// other errors, their message up to the first ": ".
func Reason(err error) string {
	var ns *notStreamableError
	if errors.As(err, &ns) {
		return ns.reason
	}
	if err == nil {
		return ""
	}
	msg := err.Error()
	if i := strings.Index(msg, ": "); i > 0 {
		return msg[:i]
	}
	return msg
}
