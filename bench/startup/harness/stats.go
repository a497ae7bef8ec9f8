package harness

import (
	"slices"
	"time"
)

// Row is the median of the runs of one image, containerd, link, mode and
// node state.
type Row struct {
	Image, Containerd, Link string
	Mode                    Mode
	State                   NodeState
	Runs, Failed            int
	Ready, Pull, Create     time.Duration
	Start, AfterStart       time.Duration
	BeforeReady             traffic
	// Total is the median total traffic over the runs whose background
	// fetch ended; TotalRuns counts them.
	Total     traffic
	TotalRuns int
	// Read is the median of the bytes read through sluiced's devices
	// before ready (Sample.AgentRead; 0 for a full pull), and FetchedPerRead
	// the median over runs of the bytes fetched through the link before
	// ready over them (0 when nothing was read).
	Read           int64
	FetchedPerRead float64
	// Speedup is the full pull's median time to ready over this row's,
	// in the same node state (0 when there is no full pull row to compare
	// with).
	Speedup float64
}

// Rows groups the samples by image, containerd, link, mode and node state (in the
// order they were measured) and takes the medians of the runs that did not
// fail.
func Rows(samples []Sample) []Row {
	type key struct {
		image, containerd, link string
		mode                    Mode
		state                   NodeState
	}
	var order []key
	groups := map[key][]Sample{}
	for _, s := range samples {
		k := key{s.Image, s.Containerd, s.Link, s.Mode, s.State}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], s)
	}
	var rows []Row
	for _, k := range order {
		r := Row{Image: k.image, Containerd: k.containerd, Link: k.link, Mode: k.mode, State: k.state}
		var ok []Sample
		for _, s := range groups[k] {
			if s.Err != "" {
				r.Failed++
				continue
			}
			ok = append(ok, s)
		}
		r.Runs = len(ok)
		if len(ok) > 0 {
			r.Ready = medianDur(ok, func(s Sample) time.Duration { return s.Ready })
			r.Pull = medianDur(ok, func(s Sample) time.Duration { return s.Pull })
			r.Create = medianDur(ok, func(s Sample) time.Duration { return s.Create })
			r.Start = medianDur(ok, func(s Sample) time.Duration { return s.Start })
			r.AfterStart = medianDur(ok, func(s Sample) time.Duration { return s.AfterStart })
			r.BeforeReady = traffic{
				Requests:   medianInt(ok, func(s Sample) int64 { return s.BeforeReady.Requests }),
				Bytes:      medianInt(ok, func(s Sample) int64 { return s.BeforeReady.Bytes }),
				LayerBytes: medianInt(ok, func(s Sample) int64 { return s.BeforeReady.LayerBytes }),
			}
			r.Read = medianInt(ok, func(s Sample) int64 { return s.AgentRead })
			var ratios []float64
			for _, s := range ok {
				if s.AgentRead > 0 {
					ratios = append(ratios, float64(s.BeforeReady.Bytes)/float64(s.AgentRead))
				}
			}
			r.FetchedPerRead = medianFloat(ratios)
			var done []Sample
			for _, s := range ok {
				if s.Total != nil {
					done = append(done, s)
				}
			}
			r.TotalRuns = len(done)
			if len(done) > 0 {
				r.Total = traffic{
					Requests:   medianInt(done, func(s Sample) int64 { return s.Total.Requests }),
					Bytes:      medianInt(done, func(s Sample) int64 { return s.Total.Bytes }),
					LayerBytes: medianInt(done, func(s Sample) int64 { return s.Total.LayerBytes }),
				}
			}
		}
		rows = append(rows, r)
	}
	for i := range rows {
		for _, f := range rows {
			if f.Mode == Full && f.Image == rows[i].Image && f.Containerd == rows[i].Containerd &&
				f.Link == rows[i].Link && f.State == rows[i].State && f.Runs > 0 && rows[i].Runs > 0 {
				rows[i].Speedup = float64(f.Ready) / float64(rows[i].Ready)
			}
		}
	}
	return rows
}

func medianDur(ss []Sample, f func(Sample) time.Duration) time.Duration {
	return time.Duration(medianInt(ss, func(s Sample) int64 { return int64(f(s)) }))
}

// medianInt is the median of f over ss (the mean of the middle two for an
// even count); ss is not empty.
func medianInt(ss []Sample, f func(Sample) int64) int64 {
	v := make([]int64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// medianFloat is the median of v (0 if v is empty).
func medianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
