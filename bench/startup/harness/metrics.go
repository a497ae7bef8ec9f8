package harness

import (
	"context"
	"fmt"
	"strings"

	"github.com/sluice-project/sluice/test/testenv"
)

// metrics are the samples of a Prometheus text exposition: "name{labels}"
// -> value.
type metrics map[string]float64

// scrape fetches and parses http://addr/metrics.
func scrape(ctx context.Context, addr string) (metrics, error) {
	m, err := testenv.GetMetrics(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("sluiced /metrics: %w", err)
	}
	return metrics(m), nil
}

// sum adds the samples of metric name over all its label values.
func (m metrics) sum(name string) float64 {
	var total float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			total += v
		}
	}
	return total
}

// all returns the values of metric name, one per label set.
func (m metrics) all(name string) []float64 {
	var out []float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			out = append(out, v)
		}
	}
	return out
}
