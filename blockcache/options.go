package blockcache

import (
	"time"

	"github.com/sluice-project/sluice/imageconv/artifact"
)

// Option configures Open.
type Option func(*imageConfig)

type imageConfig struct {
	readTimeout      time.Duration
	concurrency      int
	maxRange         int64
	profile          *artifact.Profile
	artifactProfile  bool
	rate             int64
	burst            int64
	record           bool
	fetchOpts        []FetchOption
	fetcher          rangeFetcher // tests only
	limiterClockHook func(*tokenBucket)
}

func defaultImageConfig() imageConfig {
	return imageConfig{
		readTimeout:     DefaultReadTimeout,
		concurrency:     DefaultConcurrency,
		maxRange:        DefaultMaxRange,
		artifactProfile: true,
		rate:            DefaultBackgroundRate,
	}
}

// WithReadTimeout bounds each ReadAt; a read that cannot be served in time
// fails with an error wrapping ErrTimeout (default DefaultReadTimeout). Fetches a timed
// out read started go on, so the next read may find the chunk. 0 means
// no deadline: a read waits as long as the registry stays down.
func WithReadTimeout(d time.Duration) Option { return func(c *imageConfig) { c.readTimeout = d } }

// WithConcurrency bounds the range requests in flight (default
// DefaultConcurrency).
func WithConcurrency(n int) Option { return func(c *imageConfig) { c.concurrency = max(n, 1) } }

// WithMaxRange bounds the bytes one coalesced range request asks for
// (default DefaultMaxRange; a single bigger chunk is still fetched whole).
func WithMaxRange(n int64) Option { return func(c *imageConfig) { c.maxRange = max(n, 1) } }

// WithProfile prefetches the profile's chunks first, in its order, instead
// of the artifact's own profile blob.
func WithProfile(p artifact.Profile) Option { return func(c *imageConfig) { c.profile = &p } }

// WithArtifactProfile says whether to fetch and follow the artifact's
// profile blob when no WithProfile is given (default true).
func WithArtifactProfile(on bool) Option { return func(c *imageConfig) { c.artifactProfile = on } }

// WithBackgroundRate fetches every chunk not yet cached in the background,
// after the profile, at bytesPerSecond of compressed data with bursts of one
// range (default DefaultBackgroundRate; 0: no background fetch beyond the
// profile). Background fetches always yield to reads.
func WithBackgroundRate(bytesPerSecond int64) Option {
	return func(c *imageConfig) { c.rate = bytesPerSecond }
}

// WithRecording records the order in which reads first touch chunks,
// for Recorded (default off: a read then takes no lock for it).
func WithRecording(on bool) Option { return func(c *imageConfig) { c.record = on } }

// WithFetchOptions configures the image's RangeFetcher (credentials,
// plain HTTP, transport, retries).
func WithFetchOptions(opts ...FetchOption) Option {
	return func(c *imageConfig) { c.fetchOpts = append(c.fetchOpts, opts...) }
}
