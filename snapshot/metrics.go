package snapshot

import "github.com/prometheus/client_golang/prometheus"

// Collector returns a Prometheus collector of the snapshotter's counters
// (Stats), read at scrape time.
func (s *Snapshotter) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Snapshotter }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("sluice_"+name, help, labels, nil)
}

var (
	descImageMounts     = desc("image_mounts", "Image mounts (ext4 on a device) live now.")
	descPlaceholders    = desc("placeholders_total", "Layers committed as placeholders instead of being downloaded.")
	descMaterialized    = desc("materializations_total", "Layer placeholders filled with their real layer.")
	descMaterializeFail = desc("materialization_failures_total", "Failed attempts to materialize a layer placeholder.")
	descFallbacks       = desc("fallbacks_total", "Images pulled the ordinary way, by reason.", "reason")
	descRefusals        = desc("refusals_total", "Pulls failed under policy \"require\", by reason.", "reason")
	descAttachErrors    = desc("attach_errors_total", "Devices that could not be attached to an export or adopted.")
	descMountErrors     = desc("mount_errors_total", "Image mounts that failed on an attached device.")
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descImageMounts, descPlaceholders, descMaterialized, descMaterializeFail,
		descFallbacks, descRefusals, descAttachErrors, descMountErrors,
	} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(descImageMounts, prometheus.GaugeValue, float64(st.Images))
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
}
