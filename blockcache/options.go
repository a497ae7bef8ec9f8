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
	quiet            time.Duration
	burst            int64
	record           bool
	readahead        int64
	faultAround      float64
	metadataFirst    bool
	fetchOpts        []FetchOption
	fetcher          rangeFetcher                          // tests only
	link             func() (float64, time.Duration, bool) // tests only: the link fault-around sees
	limiterClockHook func(*tokenBucket)
}

func defaultImageConfig() imageConfig {
	return imageConfig{
		readTimeout:     DefaultReadTimeout,
		concurrency:     DefaultConcurrency,
		maxRange:        DefaultMaxRange,
		artifactProfile: true,
		rate:            DefaultBackgroundRate,
		quiet:           DefaultBackgroundQuiet,
		readahead:       DefaultReadahead,
		faultAround:     DefaultFaultAround,
		metadataFirst:   true,
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
// profile). Background fetches always yield to reads, and this one also
// yields the link (WithBackgroundQuiet).
func WithBackgroundRate(bytesPerSecond int64) Option {
	return func(c *imageConfig) { c.rate = bytesPerSecond }
}

// WithBackgroundQuiet makes the background fetch of every chunk
// (WithBackgroundRate; not the profile's prefetch) yield the link to reads
// (default DefaultBackgroundQuiet; 0: yield only the fetch slots). It starts
// no range request until no read has faulted, and no fault fetch has
// started or ended, for d, counting from Open: while a container starts
// and faults, the registry link is its reads' alone, save for at most one
// background range already in flight when a fault comes (it is not
// cancelled: that would throw away the bytes it has, and its connection).
// Once faults have stopped for d, the fetch resumes at once at its full
// rate, the token bucket having refilled to its burst meanwhile. A read
// that keeps faulting more often than every d holds the background fetch
// back as long as it does, for at most a minute after Open; after that the
// background fetch yields fetch slots only, as with d 0.
func WithBackgroundQuiet(d time.Duration) Option { return func(c *imageConfig) { c.quiet = max(d, 0) } }

// WithReadahead fetches ahead of sequential faults (default
// DefaultReadahead; 0: off). A fault that starts at the chunk where an
// earlier fault's fetch ended (a file read from start to end, an
// interpreter importing the files a package wrote side by side) continues
// that stream, and its fetch covers twice the image bytes of the stream's
// last one, up to maxBytes (and WithMaxRange): the faulting chunks first,
// then the chunks after them, in one range request. A few streams are
// followed at once; a fault continuing none fetches only its own chunks.
//
// Only the faulting chunks are foreground: the read waits for them alone,
// they come first in the range, and the chunks ahead join the store as
// background chunks until a read comes for them. The range request holds
// its fetch slot until its last byte, so a fault elsewhere may wait for a
// slot as long as one range takes, never longer: readahead never holds
// the last free slot of WithConcurrency (unless that is 1).
func WithReadahead(maxBytes int64) Option {
	return func(c *imageConfig) { c.readahead = max(maxBytes, 0) }
}

// WithFaultAround sizes the fetch of a fault that continues no sequential
// stream (see WithReadahead) by the link (default DefaultFaultAround; 0:
// off): besides its own chunks it fetches the chunks after them, up to
// rtts round trips' worth of the link's bytes (its measured body rate
// times its measured request-to-answer time; compressed bytes), within
// the readahead bound and WithMaxRange, and starts a stream there. An
// image's files lie in the order its layers wrote them, so a fault's
// neighbours are mostly read soon after (a package's modules and
// libraries); on a slow link the bound shrinks below a chunk and a fault
// fetches only its own. Until the link has been measured (a range request
// answered, a body of 64 KiB or more timed), faults fetch their own
// chunks only. Like readahead, the chunks ahead are background chunks:
// the read waits for its own alone. Readahead 0 turns it off too.
func WithFaultAround(rtts float64) Option {
	return func(c *imageConfig) { c.faultAround = max(rtts, 0) }
}

// WithMetadataFirst fetches, at Open, the chunks of the ext4 image's
// metadata (superblock, group descriptors, bitmaps, inode tables, then the
// blocks of directories) before the profile and the background fetch
// (default true). Found from the filesystem itself, read through the
// image: an image whose superblock is not one this reads is logged and
// served all the same. It runs at background priority, so reads go first,
// but does not wait for the quiet window of WithBackgroundQuiet: a
// starting container reads its filesystem's metadata first.
func WithMetadataFirst(on bool) Option { return func(c *imageConfig) { c.metadataFirst = on } }

// WithRecording records the order in which reads first touch chunks,
// for Recorded (default off: a read then takes no lock for it).
func WithRecording(on bool) Option { return func(c *imageConfig) { c.record = on } }

// WithFetchOptions configures the image's RangeFetcher (credentials,
// plain HTTP, transport, retries).
func WithFetchOptions(opts ...FetchOption) Option {
	return func(c *imageConfig) { c.fetchOpts = append(c.fetchOpts, opts...) }
}
