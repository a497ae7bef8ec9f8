package service

import (
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sluice-project/sluice/imageconv/artifact"
	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// Defaults of the options.
const (
	DefaultMaxParallel  = 2
	DefaultMaxQueue     = 1000
	DefaultMaxImageSize = 8 << 30
	DefaultJobTimeout   = time.Hour
	DefaultAttempts     = 5
	DefaultRetryDelay   = 5 * time.Second
)

// Option configures New.
type Option func(*options) error

type options struct {
	signKey     *signature.PrivateKey
	repos       []pattern
	registries  map[string]bool // nil: any
	maxParallel int
	maxQueue    int
	maxSource   int64
	platforms   []v1.Platform
	chunkSize   int64
	plainHTTP   bool
	keychain    authn.Keychain
	jobTimeout  time.Duration
	attempts    int
	retryDelay  time.Duration
}

func newOptions(opts []Option) (*options, error) {
	o := &options{
		maxParallel: DefaultMaxParallel,
		maxQueue:    DefaultMaxQueue,
		maxSource:   DefaultMaxImageSize,
		chunkSize:   artifact.DefaultChunkSize,
		keychain:    authn.DefaultKeychain,
		jobTimeout:  DefaultJobTimeout,
		attempts:    DefaultAttempts,
		retryDelay:  DefaultRetryDelay,
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// WithSignKey signs every artifact pushed with key; an image counts as
// converted only when it has an artifact signed with it. Without a key,
// any artifact of the image counts.
func WithSignKey(key *signature.PrivateKey) Option {
	return func(o *options) error { o.signKey = key; return nil }
}

// WithRepos converts only images of repositories matching one of the
// patterns (default: every repository). A pattern is matched against the
// repository's name, e.g. "team/app" ("*" matches within one path
// component, as path.Match; a trailing "/**" matches everything below),
// or, when its first component is a registry (has a "." or ":", or is
// "localhost"), against REGISTRY/REPOSITORY.
func WithRepos(patterns ...string) Option {
	return func(o *options) error {
		for _, s := range patterns {
			p, err := parsePattern(s)
			if err != nil {
				return err
			}
			o.repos = append(o.repos, p)
		}
		return nil
	}
}

// WithRegistries converts only images of these registries (host[:port]),
// whatever a request names (default: any registry a notification or
// request names).
func WithRegistries(hosts ...string) Option {
	return func(o *options) error {
		if o.registries == nil {
			o.registries = map[string]bool{}
		}
		for _, h := range hosts {
			o.registries[h] = true
		}
		return nil
	}
}

// WithMaxParallel bounds the conversions running at once (default
// DefaultMaxParallel).
func WithMaxParallel(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max parallel conversions: want 1 or more, got %d", n)
		}
		o.maxParallel = n
		return nil
	}
}

// WithMaxQueue bounds the jobs queued and running (default
// DefaultMaxQueue); more are refused.
func WithMaxQueue(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max queue: want 1 or more, got %d", n)
		}
		o.maxQueue = n
		return nil
	}
}

// WithMaxImageSize refuses images whose layers' compressed plus
// uncompressed bytes pass n (default DefaultMaxImageSize; see
// imageconv.WithMaxSourceSize).
func WithMaxImageSize(n int64) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max image size: want 1 or more bytes, got %d", n)
		}
		o.maxSource = n
		return nil
	}
}

// WithPlatforms converts only these platforms of multi-platform images
// and only images of these platforms (default: all).
func WithPlatforms(ps ...v1.Platform) Option {
	return func(o *options) error { o.platforms = append(o.platforms, ps...); return nil }
}

// WithChunkSize is the artifacts' chunk size (default
// artifact.DefaultChunkSize).
func WithChunkSize(n int64) Option {
	return func(o *options) error {
		if err := artifact.ValidateChunkSize(n); err != nil {
			return err
		}
		o.chunkSize = n
		return nil
	}
}

// WithPlainHTTP talks to every registry over plain HTTP.
func WithPlainHTTP() Option { return func(o *options) error { o.plainHTTP = true; return nil } }

// WithKeychain resolves registry credentials with k (default: the docker
// config and its credential helpers).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error { o.keychain = k; return nil }
}

// WithJobTimeout bounds one conversion (default DefaultJobTimeout).
func WithJobTimeout(d time.Duration) Option {
	return func(o *options) error { o.jobTimeout = d; return nil }
}

// WithRetries retries a job whose registry could not be reached up to
// attempts times in all, waiting delay, then twice as long each time
// (default DefaultAttempts, DefaultRetryDelay).
func WithRetries(attempts int, delay time.Duration) Option {
	return func(o *options) error {
		if attempts < 1 {
			return fmt.Errorf("attempts: want 1 or more, got %d", attempts)
		}
		o.attempts, o.retryDelay = attempts, delay
		return nil
	}
}
