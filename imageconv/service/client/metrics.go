package client

import "github.com/prometheus/client_golang/prometheus"

var descRequests = prometheus.NewDesc("sluice_convert_requests_total",
	"Conversion requests for images that fell back for want of an artifact, by what became of them (sent, failed, deduplicated, dropped).",
	[]string{"result"}, nil)

// Collector returns a Prometheus collector of Counts, read at scrape
// time.
func (c *Client) Collector() prometheus.Collector { return collector{c} }

type collector struct{ c *Client }

func (collector) Describe(ch chan<- *prometheus.Desc) { ch <- descRequests }

func (k collector) Collect(ch chan<- prometheus.Metric) {
	n := k.c.Counts()
	for result, v := range map[string]uint64{"sent": n.Sent, "failed": n.Failed, "deduplicated": n.Deduplicated, "dropped": n.Dropped} {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(v), result)
	}
}
