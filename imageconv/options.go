package imageconv

import (
	"context"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// Option configures Convert and Export.
type Option func(*options)

type options struct {
	platforms []v1.Platform
	chunkSize int64
	workDir   string
	progress  Progress
	signKey   *signature.PrivateKey
	dryRun    bool
	maxSource int64
	// registry holds what reaching the registry takes (plain HTTP,
	// credentials, remote options), for the artifact package's calls and
	// our own.
	registry []artifact.Option
}

func newOptions(opts []Option) *options {
	o := &options{
		chunkSize: artifact.DefaultChunkSize,
		workDir:   os.TempDir(),
		progress:  noProgress{},
	}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// WithPlainHTTP talks to the registry over plain HTTP.
func WithPlainHTTP() Option {
	return func(o *options) { o.registry = append(o.registry, artifact.WithPlainHTTP()) }
}

// WithPlatforms limits a multi-platform image to these platforms
// ("os/arch[/variant]"); Export uses the first one.
func WithPlatforms(ps ...v1.Platform) Option {
	return func(o *options) { o.platforms = append(o.platforms, ps...) }
}

// WithChunkSize sets the chunk size (a power of two, 4 KiB to 64 MiB).
func WithChunkSize(n int64) Option { return func(o *options) { o.chunkSize = n } }

// WithWorkDir puts temporary files in dir instead of os.TempDir().
func WithWorkDir(dir string) Option { return func(o *options) { o.workDir = dir } }

// WithProgress reports progress of long steps to p.
func WithProgress(p Progress) Option { return func(o *options) { o.progress = p } }

// WithSignKey signs each artifact Convert pushes with key (package
// signature), storing the signature next to it.
func WithSignKey(key *signature.PrivateKey) Option { return func(o *options) { o.signKey = key } }

// WithDryRun makes Convert build the artifacts and report their digests
// without pushing anything (conversion is deterministic: a digest says
// what a conversion would push).
func WithDryRun() Option { return func(o *options) { o.dryRun = true } }

// WithMaxSourceSize refuses an image (ErrTooLarge) whose layers' compressed
// plus uncompressed bytes exceed n: before any layer is downloaded when the
// compressed sizes alone do, otherwise as soon as the uncompressed bytes
// read do. A conversion's work dir then stays within about twice n (the
// uncompressed layers spooled, the ext4 image, the compressed chunks).
// 0, the default, sets no bound.
func WithMaxSourceSize(n int64) Option { return func(o *options) { o.maxSource = n } }

// WithKeychain resolves registry credentials with k instead of the docker
// config and credential helpers.
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) { o.registry = append(o.registry, artifact.WithKeychain(k)) }
}

// WithRemoteOptions passes options to go-containerregistry's remote package
// (a transport, retry policy, ...).
func WithRemoteOptions(ro ...remote.Option) Option {
	return func(o *options) { o.registry = append(o.registry, artifact.WithRemoteOptions(ro...)) }
}

// lookupOptions are the options of an artifact.Lookup of what Export reads.
func (o *options) lookupOptions() []artifact.Option {
	if len(o.platforms) == 0 {
		return o.registry
	}
	return append(o.registry[:len(o.registry):len(o.registry)], artifact.WithPlatform(o.platforms[0]))
}

func (o *options) remoteOptions(ctx context.Context) []remote.Option {
	return artifact.RemoteOptions(ctx, o.registry...)
}

// resolve parses image and fetches its manifest or index.
func (o *options) resolve(ctx context.Context, image string) (name.Reference, *remote.Descriptor, error) {
	ref, err := artifact.ParseReference(image, o.registry...)
	if err != nil {
		return nil, nil, err
	}
	desc, err := remote.Get(ref, o.remoteOptions(ctx)...)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching %s: %w", image, err)
	}
	return ref, desc, nil
}
