package source

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-project/sluice/blockcache"
)

// Collector returns a Prometheus collector of the data path, read at
// scrape time: totals over every image opened since New (closed ones
// included, so that counters never go down), each open image's progress,
// and the chunk store's use.
func (s *Source) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Source }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("sluice_"+name, help, labels, nil)
}

var (
	descFetched      = desc("fetched_bytes_total", "Compressed bytes fetched from registries by verified range requests (all images).")
	descBackground   = desc("background_fetched_bytes_total", "Part of sluice_fetched_bytes_total fetched by prefetch and background streaming.")
	descYields       = desc("background_yields_total", "Background range requests that waited for reads to stop faulting (the quiet window).")
	descFetches      = desc("fetches_total", "Range requests that fetched chunks.")
	descHits         = desc("cache_hits_total", "Chunks that reads found in the local cache.")
	descMisses       = desc("cache_misses_total", "Chunks that reads had to fetch from the registry.")
	descCorrupt      = desc("corrupt_chunks_total", "Fetched chunks that failed verification (never cached or served).")
	descReads        = desc("reads_total", "Block reads served to devices.")
	descReadBytes    = desc("read_bytes_total", "Bytes of images served to block reads (what devices read, kernel readahead and probes included), to compare with sluice_fetched_bytes_total.")
	descReadErrors   = desc("read_errors_total", "Block reads answered with an I/O error.")
	descTimeouts     = desc("read_timeouts_total", "Block reads that hit cache.read_timeout.")
	descFault        = desc("fault_latency_seconds", "Latency of block reads that needed a fetch.")
	descPercent      = desc("image_percent_complete", "Percent of an image's chunks present locally.", "image", "artifact")
	descImageFetched = desc("image_fetched_bytes", "Compressed bytes fetched for an image since its export opened.", "image", "artifact")
	descExports      = desc("exports", "Images served as NBD exports now.")
	descCacheUsed    = desc("cache_used_bytes", "Bytes the chunk cache holds.")
	descCacheLimit   = desc("cache_limit_bytes", "Bound of the chunk cache (cache.size).")
	descCacheChunks  = desc("cache_chunks", "Chunks in the chunk cache.")
	descEvictions    = desc("cache_evictions_total", "Chunks evicted from the cache for room.")
	descMirror       = desc("mirror_requests_total", "Range requests sent to registry mirrors (registry.config_path): answered by the mirror, or passed on to the next host (the mirror was down, lacked the blob or cut its answer short).", "result")
	descRejected     = desc("rejected_artifacts_total", "Artifacts of images that were not used (grafted, unsigned, badly signed, ambiguous, corrupt), by reason.", "reason")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descFetched, descBackground, descYields, descFetches, descHits, descMisses, descCorrupt, descReads,
		descReadErrors, descTimeouts, descFault, descReadBytes, descPercent, descImageFetched, descExports,
		descCacheUsed, descCacheLimit, descCacheChunks, descEvictions, descRejected, descMirror,
	} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	live, retired := c.s.Images()
	totals := blockcache.Stats{FaultLatency: blockcache.Histogram{Bounds: blockcache.FaultLatencyBounds}}
	totals.Add(retired)
	for _, im := range live {
		totals.Add(im.Stats)
		gauge(descPercent, im.Stats.PercentComplete, im.Image, im.Export)
		gauge(descImageFetched, float64(im.Stats.BytesFetched), im.Image, im.Export)
	}
	gauge(descExports, float64(len(live)))
	counter(descFetched, float64(totals.BytesFetched))
	counter(descBackground, float64(totals.BackgroundBytes))
	counter(descYields, float64(totals.BackgroundYields))
	counter(descFetches, float64(totals.Fetches))
	counter(descHits, float64(totals.CacheHits))
	counter(descMisses, float64(totals.CacheMisses))
	counter(descCorrupt, float64(totals.CorruptChunks))
	counter(descReads, float64(totals.Reads))
	counter(descReadBytes, float64(totals.BytesRead))
	counter(descReadErrors, float64(totals.ReadErrors))
	counter(descTimeouts, float64(totals.Timeouts))
	counter(descMirror, float64(totals.Fetcher.MirrorAnswers), "answered")
	counter(descMirror, float64(totals.Fetcher.MirrorFallbacks), "passed_on")
	fault := totals.FaultLatency
	ch <- prometheus.MustNewConstHistogram(descFault, fault.Count, fault.Sum.Seconds(), fault.Cumulative())

	ss := c.s.store.Stats()
	gauge(descCacheUsed, float64(ss.Used))
	gauge(descCacheLimit, float64(ss.Limit))
	gauge(descCacheChunks, float64(ss.Chunks))
	counter(descEvictions, float64(ss.Evictions))
	for reason, n := range c.s.Rejected() {
		counter(descRejected, float64(n), reason)
	}
}
