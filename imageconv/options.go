package imageconv

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Option configures Convert, Lookup and Export.
type Option func(*options)

type options struct {
	plainHTTP bool
	platforms []v1.Platform
	chunkSize int64
	workDir   string
	progress  Progress
	keychain  authn.Keychain
	remote    []remote.Option
}

func newOptions(opts []Option) *options {
	o := &options{
		chunkSize: DefaultChunkSize,
		workDir:   os.TempDir(),
		progress:  noProgress{},
		keychain:  authn.DefaultKeychain,
	}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// WithPlainHTTP talks to the registry over plain HTTP.
func WithPlainHTTP() Option { return func(o *options) { o.plainHTTP = true } }

// WithPlatforms limits a multi-platform image to these platforms
// ("os/arch[/variant]"); for Lookup and Export the first one is used.
func WithPlatforms(ps ...v1.Platform) Option {
	return func(o *options) { o.platforms = append(o.platforms, ps...) }
}

// WithChunkSize sets the chunk size (a power of two, 4 KiB to 64 MiB).
func WithChunkSize(n int64) Option { return func(o *options) { o.chunkSize = n } }

// WithWorkDir puts temporary files in dir instead of os.TempDir().
func WithWorkDir(dir string) Option { return func(o *options) { o.workDir = dir } }

// WithProgress reports progress of long steps to p.
func WithProgress(p Progress) Option { return func(o *options) { o.progress = p } }

// WithKeychain resolves registry credentials with k instead of the docker
// config and credential helpers.
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithRemoteOptions passes options to go-containerregistry's remote package
// (a transport, retry policy, ...).
func WithRemoteOptions(ro ...remote.Option) Option {
	return func(o *options) { o.remote = append(o.remote, ro...) }
}

// ParsePlatforms parses a comma-separated list such as "linux/amd64,linux/arm64/v8".
func ParsePlatforms(s string) ([]v1.Platform, error) {
	var ps []v1.Platform
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want os/arch[/variant]", f)
		}
		ps = append(ps, *p)
	}
	return ps, nil
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

// resolve parses image and fetches its manifest or index.
func (o *options) resolve(ctx context.Context, image string) (name.Reference, *remote.Descriptor, error) {
	ref, err := o.parse(image)
	if err != nil {
		return nil, nil, err
	}
	desc, err := remote.Get(ref, o.remoteOptions(ctx)...)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching %s: %w", image, err)
	}
	return ref, desc, nil
}

func (o *options) remoteOptions(ctx context.Context) []remote.Option {
	ro := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(o.keychain),
		remote.WithUserAgent("sluice"),
	}
	return append(ro, o.remote...)
}

// lookupPlatform is the platform Lookup and Export pick from an index.
func (o *options) lookupPlatform() v1.Platform {
	if len(o.platforms) > 0 {
		return o.platforms[0]
	}
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}
