package blockcache

import (
	"sync"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of one image's data path.
type Stats struct {
	// ImageSize is the flattened image's size in bytes; DataSize the data
	// blob's.
	ImageSize, DataSize int64
	// ChunksTotal counts every chunk of the image, ChunksZero the all-zero
	// ones, ChunksPresent those a read finds locally (zero chunks and
	// chunks in the store). PercentComplete is 100*present/total.
	ChunksTotal, ChunksZero, ChunksPresent int
	PercentComplete                        float64
	// BytesFetched counts compressed bytes of verified range requests,
	// BackgroundBytes the part fetched by prefetch; Fetches those requests.
	BytesFetched, BackgroundBytes, Fetches int64
	// Fetcher is what the range fetcher saw, retries and discarded bytes
	// of ignored Range headers included.
	Fetcher FetchStats
	// CacheHits and CacheMisses count chunks looked up by reads.
	CacheHits, CacheMisses int64
	// CorruptChunks counts fetched chunks that failed verification.
	CorruptChunks int64
	// Reads, ReadErrors and Timeouts count ReadAt calls.
	Reads, ReadErrors, Timeouts int64
	// BytesRead counts the bytes of the image that reads served (all
	// three read paths; a failed read serves none): what the device's
	// users, the kernel and its readahead included, read, to compare with
	// BytesFetched.
	BytesRead int64
	// FaultLatency is the latency of reads that needed a fetch.
	FaultLatency Histogram
	// BackgroundDone is set once prefetch has fetched every chunk.
	BackgroundDone bool
	// BackgroundYields counts background range requests that waited for
	// reads to stop faulting (WithBackgroundQuiet).
	BackgroundYields int64
	// ReadaheadChunks counts chunks fetched ahead of sequential faults
	// (WithReadahead); MetadataChunks the chunks of filesystem metadata
	// fetched, or found cached, at Open (WithMetadataFirst).
	ReadaheadChunks, MetadataChunks int64
}

// FaultLatencyBounds are the upper bounds of FaultLatency's buckets.
var FaultLatencyBounds = []time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second,
}

// Histogram counts observations in buckets: Counts[i] counts those at most
// Bounds[i] (and above Bounds[i-1]); the last count, one past Bounds, those
// above every bound. Counts are not cumulative.
type Histogram struct {
	Bounds []time.Duration
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

type histogram struct {
	mu sync.Mutex
	h  Histogram
}

func newHistogram(bounds []time.Duration) *histogram {
	return &histogram{h: Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds)+1)}}
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(h.h.Bounds) && d > h.h.Bounds[i] {
		i++
	}
	h.mu.Lock()
	h.h.Counts[i]++
	h.h.Count++
	h.h.Sum += d
	h.mu.Unlock()
}

func (h *histogram) snapshot() Histogram {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.h
	s.Counts = append([]uint64(nil), h.h.Counts...)
	return s
}

// counters are an image's live statistics.
type counters struct {
	bytesFetched, backgroundBytes, fetches atomic.Int64
	hits, misses, corrupt                  atomic.Int64
	aheadChunks, metadataChunks            atomic.Int64
	reads, readErrors, timeouts            atomic.Int64
	bytesRead                              atomic.Int64
	backgroundDone                         atomic.Bool
	faultLatency                           *histogram
}

func newCounters() *counters { return &counters{faultLatency: newHistogram(FaultLatencyBounds)} }

// Add adds the counters of o (bytes, fetches, cache lookups, reads and
// fault latencies) to s, for totals over several images. Geometry and
// progress fields stay as they are.
func (s *Stats) Add(o Stats) {
	s.BytesFetched += o.BytesFetched
	s.BackgroundBytes += o.BackgroundBytes
	s.BackgroundYields += o.BackgroundYields
	s.ReadaheadChunks += o.ReadaheadChunks
	s.MetadataChunks += o.MetadataChunks
	s.Fetches += o.Fetches
	s.CacheHits += o.CacheHits
	s.CacheMisses += o.CacheMisses
	s.CorruptChunks += o.CorruptChunks
	s.Reads += o.Reads
	s.BytesRead += o.BytesRead
	s.ReadErrors += o.ReadErrors
	s.Timeouts += o.Timeouts
	s.FaultLatency.Add(o.FaultLatency)
	s.Fetcher.Add(o.Fetcher)
}

// Add adds o's counts to s.
func (s *FetchStats) Add(o FetchStats) {
	s.Requests += o.Requests
	s.Retries += o.Retries
	s.Bytes += o.Bytes
	s.RangeIgnored += o.RangeIgnored
	s.MirrorAnswers += o.MirrorAnswers
	s.MirrorFallbacks += o.MirrorFallbacks
}

// Add adds o's observations to h; both must have the same bounds (an h
// without bounds takes o's).
func (h *Histogram) Add(o Histogram) {
	if h.Bounds == nil {
		h.Bounds = o.Bounds
	}
	if h.Counts == nil {
		h.Counts = make([]uint64, len(h.Bounds)+1)
	}
	for i, c := range o.Counts {
		if i < len(h.Counts) {
			h.Counts[i] += c
		}
	}
	h.Count += o.Count
	h.Sum += o.Sum
}

// Cumulative returns the buckets as Prometheus counts them: upper bound in
// seconds -> observations at most that long (the total count is +Inf's).
func (h Histogram) Cumulative() map[float64]uint64 {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			cum += h.Counts[i]
		}
		buckets[b.Seconds()] = cum
	}
	return buckets
}
