package artifact

import (
	"context"
	"fmt"
	"runtime"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/blockcache/registryhosts"
)

// Option configures Lookup and Push.
type Option func(*options)

type options struct {
	plainHTTP bool
	platform  *v1.Platform
	keychain  authn.Keychain
	remote    []remote.Option
	verifier  Verifier
	hosts     []registryhosts.Host
	minSize   int64

	// pullers are reuse's, by host.
	pullersMu sync.Mutex
	pullers   map[int]*remote.Puller
}

func newOptions(opts []Option) *options {
	o := &options{keychain: authn.DefaultKeychain}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// WithPlainHTTP talks to the registry over plain HTTP.
func WithPlainHTTP() Option { return func(o *options) { o.plainHTTP = true } }

// WithPlatform is the platform Lookup picks from a multi-platform image
// (default: linux on this machine's architecture).
func WithPlatform(p v1.Platform) Option { return func(o *options) { o.platform = &p } }

// WithMinImageSize makes Lookup and LookupManifest give up, with an error
// that Is ErrSmallImage, when every artifact the referrers list names says
// (annotation AnnotationImageSize) that its flattened image is smaller
// than n bytes: decided from the listing alone, before any artifact
// manifest or index is fetched. An artifact without the annotation counts
// as large. 0 (the default) turns the bound off.
func WithMinImageSize(n int64) Option { return func(o *options) { o.minSize = n } }

// WithKeychain resolves registry credentials with k instead of the docker
// config and credential helpers.
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithRemoteOptions passes options to go-containerregistry's remote package
// (a transport, retry policy, ...).
func WithRemoteOptions(ro ...remote.Option) Option {
	return func(o *options) { o.remote = append(o.remote, ro...) }
}

// RemoteOptions are the go-containerregistry remote options that opts
// stand for: ctx, credentials, the user agent and WithRemoteOptions'.
func RemoteOptions(ctx context.Context, opts ...Option) []remote.Option {
	return newOptions(opts).remoteOptions(ctx)
}

// ParseReference parses an image reference, for plain HTTP if opts say so.
func ParseReference(image string, opts ...Option) (name.Reference, error) {
	return newOptions(opts).parse(image)
}

func (o *options) parse(image string) (name.Reference, error) {
	var nopts []name.Option
	if o.plainHTTP {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(image, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", image, err)
	}
	return ref, nil
}

func (o *options) remoteOptions(ctx context.Context) []remote.Option {
	ro := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(o.keychain),
		remote.WithUserAgent("sluice"),
	}
	return append(ro, o.remote...)
}

// lookupPlatform is the platform Lookup picks from an index.
func (o *options) lookupPlatform() v1.Platform {
	if o.platform != nil {
		return *o.platform
	}
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}
