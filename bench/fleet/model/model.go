// Package model predicts what a fleet of nodes cold-starting one image
// costs its registry (the origin), from one node's trace, for three
// setups:
//
//   - Direct: every node fetches from the origin.
//   - PullThrough: every node fetches through one pull-through cache (as
//     distribution 2.8's proxy behaves, pinned by debregistry.TestProxy):
//     a blob the cache lacks is fetched from the origin once for its store,
//     and once more for each request that reaches the cache while that
//     fill runs (it streams those through whole); a node that was streamed
//     a whole blob fetches its ranges from the origin for a while (see
//     fills); later requests are served from the cache's store.
//   - P2P: nodes fetch each range from a peer that has it (an in-cluster
//     engine such as Spegel); the first request for a range, and the share
//     of later ones no peer answers (1 - P2PHit), go to the origin.
//
// Terms: a node's trace is what one node fetched, measured alone: each
// request (blob, byte range, time after the node's start, whether it was
// before the node was ready) and the requests of its artifact lookup that
// only the origin answers (referrers, tag checks). Times are in seconds.
// The model is a fluid one: requests keep the trace's times (shifted by
// each node's start), and the time until every node is ready is bounded by
// the bytes the busiest link must carry before then.
package model

import (
	"fmt"
	"math"
)

// Request is one request of a node's trace.
type Request struct {
	Blob string `json:"blob"`
	// Off and Len are the range (Len = the blob's size for a whole GET).
	Off int64 `json:"off"`
	Len int64 `json:"len"`
	// T is when the node sent it, in seconds after its start.
	T float64 `json:"t"`
	// BeforeReady is true for requests the node waited for before it was
	// ready; the others are background fetches.
	BeforeReady bool `json:"before_ready"`
}

// Trace is one node's cold start, measured alone.
type Trace struct {
	// Blobs are the sizes of the blobs Requests name.
	Blobs map[string]int64 `json:"blobs"`
	// Requests are the node's blob requests, in time order.
	Requests []Request `json:"requests"`
	// OriginOnly counts the requests of a node's lookup that reach the
	// origin in every setup (the referrers list, a cache's tag check);
	// OriginOnlyBytes their bytes.
	OriginOnly      int   `json:"origin_only"`
	OriginOnlyBytes int64 `json:"origin_only_bytes"`
	// Ready is the node's time until ready, measured alone.
	Ready float64 `json:"ready"`
}

// Setup is a way of putting nodes and registry together.
type Setup int

const (
	Direct Setup = iota
	PullThrough
	P2P
)

func (s Setup) String() string {
	switch s {
	case Direct:
		return "direct"
	case PullThrough:
		return "pull-through cache"
	case P2P:
		return "p2p"
	}
	return fmt.Sprintf("setup(%d)", int(s))
}

// Params describe the fleet.
type Params struct {
	// Nodes is the number of nodes; they start Spread seconds apart in
	// all, evenly.
	Nodes  int
	Spread float64
	// OriginBandwidth, CacheBandwidth and NodeBandwidth are bytes per
	// second: what the origin serves in all, what the cache serves in all,
	// each node's link (in each direction).
	OriginBandwidth, CacheBandwidth, NodeBandwidth float64
	// P2PHit is the share of repeat requests a peer answers.
	P2PHit float64
	// FillWait is how long a node goes around a cache that streamed it a
	// whole blob (blockcache's mirrorFillWait, 2 s).
	FillWait float64
}

// Result is one setup's prediction.
type Result struct {
	Setup Setup
	// OriginBytes and OriginRequests are what the origin serves
	// (requests: blob GETs plus the lookups' origin-only requests).
	OriginBytes    int64
	OriginRequests int
	// PeakRate is the most origin requests in one second.
	PeakRate int
	// AllReady is the time from the first node's start until the last
	// one is ready.
	AllReady float64
}

// originReq is a request the origin answers, at time t.
type originReq struct {
	t     float64
	bytes int64
}

// Simulate predicts setup s for the fleet p from the node trace tr.
func Simulate(tr Trace, s Setup, p Params) (Result, error) {
	if p.Nodes < 1 {
		return Result{}, fmt.Errorf("nodes: want at least 1, got %d", p.Nodes)
	}
	for _, bw := range []float64{p.OriginBandwidth, p.CacheBandwidth, p.NodeBandwidth} {
		if bw <= 0 {
			return Result{}, fmt.Errorf("bandwidths must be positive, got %+v", p)
		}
	}
	for _, r := range tr.Requests {
		if _, ok := tr.Blobs[r.Blob]; !ok {
			return Result{}, fmt.Errorf("request for blob %s, which the trace does not size", r.Blob)
		}
	}
	starts := make([]float64, p.Nodes)
	for i := range starts {
		if p.Nodes > 1 {
			starts[i] = p.Spread * float64(i) / float64(p.Nodes-1)
		}
	}
	var origin []originReq
	for _, st := range starts {
		// The lookup's origin-only requests, at the node's start.
		for range tr.OriginOnly {
			origin = append(origin, originReq{t: st, bytes: tr.OriginOnlyBytes / int64(max(tr.OriginOnly, 1))})
		}
	}
	switch s {
	case Direct:
		for _, st := range starts {
			for _, r := range tr.Requests {
				origin = append(origin, originReq{t: st + r.T, bytes: r.Len})
			}
		}
	case PullThrough:
		origin = append(origin, fills(tr, starts, p)...)
	case P2P:
		origin = append(origin, p2p(tr, starts, p.P2PHit)...)
	default:
		return Result{}, fmt.Errorf("unknown setup %v", s)
	}
	res := Result{Setup: s, OriginRequests: len(origin)}
	for _, o := range origin {
		res.OriginBytes += o.bytes
	}
	res.PeakRate = peak(origin)
	res.AllReady = allReady(tr, s, p, starts, res.OriginBytes)
	return res, nil
}

// fills is the origin's side of a distribution 2.8 pull-through cache and
// sluice's fetcher in front of it. The cache fills a blob when the first
// request for it reaches it: a whole GET for its store, lasting size /
// origin bandwidth. Until it is stored, each request that reaches it is
// streamed through: another whole GET. A node's range requests go to the
// cache one at a time until one is answered; one answered with the whole
// blob (streamed) sends the node's requests straight to the origin, each
// its range, for FillWait. Whole-blob GETs of the artifact lookup (the
// index) are not held back. (The cache's HEADs, which it partly caches,
// are not counted.)
func fills(tr Trace, starts []float64, p Params) []originReq {
	first := map[string]float64{}
	for _, st := range starts {
		for _, r := range tr.Requests {
			if t, ok := first[r.Blob]; !ok || st+r.T < t {
				first[r.Blob] = st + r.T
			}
		}
	}
	var out []originReq
	filled := map[string]float64{} // when each blob is stored
	for blob, t := range first {
		size := tr.Blobs[blob]
		filled[blob] = t + float64(size)/p.OriginBandwidth
		out = append(out, originReq{t: t, bytes: size}) // the store's copy
	}
	for _, st := range starts {
		around := map[string]float64{} // until when the node goes around the cache, by blob
		for _, r := range tr.Requests {
			t, size := st+r.T, tr.Blobs[r.Blob]
			switch whole := r.Off == 0 && r.Len == size; {
			case !whole && t < around[r.Blob]:
				out = append(out, originReq{t: t, bytes: r.Len}) // its range, from the origin
			case t >= filled[r.Blob]:
				// served from the cache's store
			default:
				out = append(out, originReq{t: t, bytes: size}) // streamed through, whole
				if !whole {
					around[r.Blob] = t + p.FillWait
				}
			}
		}
	}
	return out
}

// p2p is the origin's side of a P2P engine: the first request for each
// range, and the misses (1 - hit) among the repeats, every 1/(1-hit)-th
// repeat in turn.
func p2p(tr Trace, starts []float64, hit float64) []originReq {
	type key struct {
		blob     string
		off, len int64
	}
	seen := map[key]bool{}
	var out []originReq
	var owed float64
	for _, st := range starts {
		for _, r := range tr.Requests {
			k := key{r.Blob, r.Off, r.Len}
			if !seen[k] {
				seen[k] = true
				out = append(out, originReq{t: st + r.T, bytes: r.Len})
				continue
			}
			if owed += 1 - hit; owed >= 1 {
				owed--
				out = append(out, originReq{t: st + r.T, bytes: r.Len})
			}
		}
	}
	return out
}

// peak is the most requests in one second.
func peak(reqs []originReq) int {
	bins := map[int64]int{}
	best := 0
	for _, r := range reqs {
		b := int64(math.Floor(r.t))
		bins[b]++
		best = max(best, bins[b])
	}
	return best
}

// allReady bounds the time until the last node is ready: no sooner than
// the last start plus a node's own time, nor than the busiest link needs
// for the bytes the nodes wait for.
func allReady(tr Trace, s Setup, p Params, starts []float64, originBytes int64) float64 {
	var before int64
	for _, r := range tr.Requests {
		if r.BeforeReady {
			before += r.Len
		}
	}
	fleet := float64(before) * float64(p.Nodes)
	t := starts[len(starts)-1] + tr.Ready
	switch s {
	case Direct:
		t = max(t, fleet/p.OriginBandwidth)
	case PullThrough:
		t = max(t, fleet/p.CacheBandwidth, float64(originBytes)/p.OriginBandwidth)
	case P2P:
		// Every node uploads as it downloads: the fleet's links carry it,
		// and the origin what no peer has.
		t = max(t, fleet/(p.NodeBandwidth*float64(p.Nodes)), float64(originBytes)/p.OriginBandwidth)
	}
	return t
}
