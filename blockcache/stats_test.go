package blockcache

import (
	"testing"
	"time"
)

// TestStatsAdd: counters of several images add up, and the fault latency
// histogram becomes cumulative buckets.
func TestStatsAdd(t *testing.T) {
	hist := func(counts ...uint64) Histogram {
		h := Histogram{Bounds: FaultLatencyBounds, Counts: make([]uint64, len(FaultLatencyBounds)+1)}
		for i, c := range counts {
			h.Counts[i] = c
			h.Count += c
		}
		h.Sum = time.Duration(h.Count) * time.Millisecond
		return h
	}
	tot := Stats{FaultLatency: Histogram{Bounds: FaultLatencyBounds}}
	tot.Add(Stats{}) // an image with nothing observed yet
	tot.Add(Stats{BytesFetched: 100, CacheHits: 3, CacheMisses: 1, FaultLatency: hist(1, 0, 2)})
	tot.Add(Stats{BytesFetched: 50, CacheHits: 1, CacheMisses: 2, FaultLatency: hist(0, 4)})
	if tot.BytesFetched != 150 || tot.CacheHits != 4 || tot.CacheMisses != 3 || tot.FaultLatency.Count != 7 {
		t.Errorf("totals %+v", tot)
	}
	b := tot.FaultLatency.Cumulative()
	bounds := FaultLatencyBounds
	if len(b) != len(bounds) || b[bounds[0].Seconds()] != 1 || b[bounds[1].Seconds()] != 5 || b[bounds[2].Seconds()] != 7 || b[bounds[len(bounds)-1].Seconds()] != 7 {
		t.Errorf("buckets %v", b)
	}
	if tot.FaultLatency.Sum != 7*time.Millisecond {
		t.Errorf("sum %v, want 7ms", tot.FaultLatency.Sum)
	}
	if empty := (Histogram{Bounds: FaultLatencyBounds}).Cumulative(); len(empty) != len(bounds) {
		t.Errorf("an empty histogram has %d buckets, want %d", len(empty), len(bounds))
	}
}
