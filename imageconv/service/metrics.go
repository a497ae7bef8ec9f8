package service

import (
	"io/fs"
	"path/filepath"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the service's Prometheus metrics (sluice_convert_*).
type metrics struct {
	reg         *prometheus.Registry
	received    *prometheus.CounterVec
	conversions *prometheus.CounterVec
	retries     prometheus.Counter
	seconds     prometheus.Histogram
	bytesIn     prometheus.Counter
	bytesOut    prometheus.Counter
}

func newMetrics(s *Service) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_convert_received_total",
			Help: "Registry events and conversion requests received, by endpoint and by what became of them (queued, duplicate, own push, malformed, ...).",
		}, []string{"endpoint", "result"}),
		conversions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_convert_conversions_total",
			Help: "Jobs done, by outcome (converted, expanded, skipped, refused, failed) and reason.",
		}, []string{"outcome", "reason"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_convert_retries_total",
			Help: "Jobs queued again because the registry could not be reached.",
		}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sluice_convert_seconds",
			Help:    "Seconds per conversion that pushed an artifact, checks included.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
		}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_convert_source_bytes_total",
			Help: "Compressed layer bytes of the images converted (read from registries).",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_convert_artifact_bytes_total",
			Help: "Bytes of the artifacts pushed (manifest, index and data blobs).",
		}),
	}
	m.conversions.WithLabelValues(outcomeConverted, reasonNone)
	for _, ep := range []string{"events", "convert"} {
		m.received.WithLabelValues(ep, resultQueued)
	}
	depth := func(running bool) func() float64 {
		return func() float64 {
			q, r := s.queue.depth()
			if running {
				return float64(r)
			}
			return float64(q)
		}
	}
	m.reg.MustRegister(m.received, m.conversions, m.retries, m.seconds, m.bytesIn, m.bytesOut,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_convert_queue_depth", Help: "Jobs queued, waiting to run."}, depth(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_convert_running", Help: "Conversions running now."}, depth(true)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_convert_work_dir_bytes", Help: "Disk space the running conversions' files take."},
			func() float64 { return float64(diskUsage(s.workDir)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_convert_max_image_size_bytes", Help: "Bound of one conversion's source, compressed plus uncompressed (--max-image-size)."},
			func() float64 { return float64(s.o.maxSource) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sluice_convert_max_parallel", Help: "Bound of the conversions running at once (--max-parallel)."},
			func() float64 { return float64(s.o.maxParallel) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// diskUsage returns the bytes of disk the files below dir take (sparse
// files count what they hold).
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}
