package main

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-project/sluice/blockcache"
)

// imageTotals adds up the data-path counters of images, so that totals do
// not go down when an image's export closes.
type imageTotals struct {
	fetchedBytes, backgroundBytes, fetches int64
	hits, misses, corrupt                  int64
	reads, readErrors, timeouts            int64
	faultCounts                            []uint64 // per bucket, not cumulative
	faultCount                             uint64
	faultSum                               float64 // seconds
}

func (t *imageTotals) add(s blockcache.Stats) {
	t.fetchedBytes += s.BytesFetched
	t.backgroundBytes += s.BackgroundBytes
	t.fetches += s.Fetches
	t.hits += s.CacheHits
	t.misses += s.CacheMisses
	t.corrupt += s.CorruptChunks
	t.reads += s.Reads
	t.readErrors += s.ReadErrors
	t.timeouts += s.Timeouts
	if t.faultCounts == nil {
		t.faultCounts = make([]uint64, len(blockcache.FaultLatencyBounds)+1)
	}
	for i, c := range s.FaultLatency.Counts {
		if i < len(t.faultCounts) {
			t.faultCounts[i] += c
		}
	}
	t.faultCount += s.FaultLatency.Count
	t.faultSum += s.FaultLatency.Sum.Seconds()
}

// faultBuckets turns the fault latency counts into Prometheus buckets:
// upper bound in seconds -> cumulative count (+Inf is the total count).
func (t *imageTotals) faultBuckets() map[float64]uint64 {
	buckets := map[float64]uint64{}
	var cum uint64
	for i, b := range blockcache.FaultLatencyBounds {
		if i < len(t.faultCounts) {
			cum += t.faultCounts[i]
		}
		buckets[b.Seconds()] = cum
	}
	return buckets
}

// collector reads the agent's counters at scrape time: the snapshotter's,
// the chunk store's and every image's.
type collector struct {
	a *agent
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("sluice_"+name, help, labels, nil)
}

var (
	descFetched         = desc("fetched_bytes_total", "Compressed bytes fetched from registries by verified range requests (all images).")
	descBackground      = desc("background_fetched_bytes_total", "Part of sluice_fetched_bytes_total fetched by prefetch and background streaming.")
	descFetches         = desc("fetches_total", "Range requests that fetched chunks.")
	descHits            = desc("cache_hits_total", "Chunks that reads found in the local cache.")
	descMisses          = desc("cache_misses_total", "Chunks that reads had to fetch from the registry.")
	descCorrupt         = desc("corrupt_chunks_total", "Fetched chunks that failed verification (never cached or served).")
	descReads           = desc("reads_total", "Block reads served to devices.")
	descReadErrors      = desc("read_errors_total", "Block reads answered with an I/O error.")
	descTimeouts        = desc("read_timeouts_total", "Block reads that hit cache.read_timeout.")
	descFault           = desc("fault_latency_seconds", "Latency of block reads that needed a fetch.")
	descPercent         = desc("image_percent_complete", "Percent of an image's chunks present locally.", "image", "artifact")
	descImageFetched    = desc("image_fetched_bytes", "Compressed bytes fetched for an image since its export opened.", "image", "artifact")
	descExports         = desc("exports", "Images served as NBD exports now.")
	descImageMounts     = desc("image_mounts", "Image mounts (ext4 on a device) live now.")
	descPlaceholders    = desc("placeholders_total", "Layers committed as placeholders instead of being downloaded.")
	descMaterialized    = desc("materializations_total", "Layer placeholders filled with their real layer.")
	descMaterializeFail = desc("materialization_failures_total", "Failed attempts to materialize a layer placeholder.")
	descFallbacks       = desc("fallbacks_total", "Images pulled the ordinary way, by reason.", "reason")
	descRefusals        = desc("refusals_total", "Pulls failed under policy \"require\", by reason.", "reason")
	descAttachErrors    = desc("attach_errors_total", "Devices that could not be attached to an export or adopted.")
	descMountErrors     = desc("mount_errors_total", "Image mounts that failed on an attached device.")
	descCacheUsed       = desc("cache_used_bytes", "Bytes the chunk cache holds.")
	descCacheLimit      = desc("cache_limit_bytes", "Bound of the chunk cache (cache.size).")
	descCacheChunks     = desc("cache_chunks", "Chunks in the chunk cache.")
	descEvictions       = desc("cache_evictions_total", "Chunks evicted from the cache for room.")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descFetched, descBackground, descFetches, descHits, descMisses, descCorrupt, descReads,
		descReadErrors, descTimeouts, descFault, descPercent, descImageFetched, descExports,
		descImageMounts, descPlaceholders, descMaterialized, descMaterializeFail, descFallbacks,
		descRefusals, descAttachErrors, descMountErrors, descCacheUsed, descCacheLimit,
		descCacheChunks, descEvictions,
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

	live, totals := c.a.src.images()
	for _, im := range live {
		s := im.image.Stats()
		totals.add(s)
		gauge(descPercent, s.PercentComplete, im.ref, im.key)
		gauge(descImageFetched, float64(s.BytesFetched), im.ref, im.key)
	}
	gauge(descExports, float64(len(live)))
	counter(descFetched, float64(totals.fetchedBytes))
	counter(descBackground, float64(totals.backgroundBytes))
	counter(descFetches, float64(totals.fetches))
	counter(descHits, float64(totals.hits))
	counter(descMisses, float64(totals.misses))
	counter(descCorrupt, float64(totals.corrupt))
	counter(descReads, float64(totals.reads))
	counter(descReadErrors, float64(totals.readErrors))
	counter(descTimeouts, float64(totals.timeouts))
	ch <- prometheus.MustNewConstHistogram(descFault, totals.faultCount, totals.faultSum, totals.faultBuckets())

	st := c.a.sn.Stats()
	gauge(descImageMounts, float64(st.Images))
	counter(descPlaceholders, float64(st.Placeholders))
	counter(descMaterialized, float64(st.Materialized))
	counter(descMaterializeFail, float64(st.MaterializeFailures))
	for reason, n := range st.Fallbacks {
		counter(descFallbacks, float64(n), reason)
	}
	for reason, n := range st.Refused {
		counter(descRefusals, float64(n), reason)
	}
	counter(descAttachErrors, float64(st.AttachErrors))
	counter(descMountErrors, float64(st.MountErrors))

	ss := c.a.store.Stats()
	gauge(descCacheUsed, float64(ss.Used))
	gauge(descCacheLimit, float64(ss.Limit))
	gauge(descCacheChunks, float64(ss.Chunks))
	counter(descEvictions, float64(ss.Evictions))
}

// health says whether the parts of the agent are up.
type health struct {
	mu   sync.Mutex
	down map[string]string // part -> why
}

func (h *health) set(part string, up bool, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down = map[string]string{}
	}
	if up {
		delete(h.down, part)
	} else {
		h.down[part] = why
	}
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(h.down) == 0 {
		w.Write([]byte("ok\n"))
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	for part, why := range h.down {
		w.Write([]byte(part + ": " + why + "\n"))
	}
}

// metricsHandler serves /healthz and /metrics.
func (a *agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a: a}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/healthz", &a.health)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}
