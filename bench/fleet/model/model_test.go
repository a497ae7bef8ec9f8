package model

import (
	"strings"
	"testing"
)

// trace: an index blob read whole at the start, then two ranges of the
// data blob before ready and one in the background.
func trace() Trace {
	return Trace{
		Blobs: map[string]int64{"index": 1000, "data": 1 << 20},
		Requests: []Request{
			{Blob: "index", Len: 1000, T: 0, BeforeReady: true},
			{Blob: "data", Off: 0, Len: 64 << 10, T: 0.1, BeforeReady: true},
			{Blob: "data", Off: 64 << 10, Len: 64 << 10, T: 0.2, BeforeReady: true},
			{Blob: "data", Off: 512 << 10, Len: 128 << 10, T: 2, BeforeReady: false},
		},
		OriginOnly: 3, OriginOnlyBytes: 3000, Ready: 1,
	}
}

func params(n int) Params {
	return Params{Nodes: n, Spread: 10, OriginBandwidth: 1e9, CacheBandwidth: 1e9, NodeBandwidth: 1e8, P2PHit: 1, FillWait: 2}
}

func sim(t *testing.T, s Setup, p Params) Result {
	t.Helper()
	r, err := Simulate(trace(), s, p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestDirectScalesWithNodes(t *testing.T) {
	perNode := int64(1000 + 64<<10 + 64<<10 + 128<<10 + 3000)
	for _, n := range []int{1, 8, 1000} {
		r := sim(t, Direct, params(n))
		if r.OriginBytes != int64(n)*perNode || r.OriginRequests != n*(4+3) {
			t.Errorf("%d nodes: %d bytes, %d requests; want %d, %d", n, r.OriginBytes, r.OriginRequests, int64(n)*perNode, n*7)
		}
	}
}

// With a fast origin, each blob's fill ends before a second node comes:
// two whole GETs of each blob (the store's copy, and the first request's,
// streamed through), whatever the fleet's size; the first node then
// fetches its other ranges from the origin for FillWait (all of them
// here); and every node's origin-only lookups.
func TestPullThroughFillsOnce(t *testing.T) {
	for _, n := range []int{1, 8, 1000} {
		r := sim(t, PullThrough, params(n))
		want := 2*int64(1000+1<<20) + 64<<10 + 128<<10 + int64(n)*3000
		if r.OriginBytes != want || r.OriginRequests != 2*2+2+3*n {
			t.Errorf("%d nodes: %d bytes, %d requests; want %d, %d", n, r.OriginBytes, r.OriginRequests, want, 2*2+2+3*n)
		}
	}
}

// Requests that reach the cache while it fills a blob are streamed through
// from the origin, whole; a node streamed the data blob fetches its next
// ranges from the origin for FillWait. The index GETs are never held back.
func TestPullThroughStreamsDuringFill(t *testing.T) {
	p := params(4)
	p.Spread = 0
	p.OriginBandwidth = 1 << 20 // the data blob's fill takes 1 s, until t = 1.1
	r := sim(t, PullThrough, p)
	// data: the store's copy, and per node: the range at 0.1 streamed
	// whole, then the ranges at 0.2 and 2 from the origin (going around
	// until 2.1). index: the store's copy + 4 streamed (all at 0).
	wantBytes := int64(1+4)<<20 + 4*(64<<10+128<<10) + int64(1+4)*1000 + 4*3000
	wantReqs := (1 + 4 + 8) + (1 + 4) + 4*3
	if r.OriginRequests != wantReqs || r.OriginBytes != wantBytes {
		t.Errorf("%d bytes, %d requests; want %d, %d", r.OriginBytes, r.OriginRequests, wantBytes, wantReqs)
	}
}

func TestP2P(t *testing.T) {
	all := sim(t, P2P, params(100))
	if want := int64(1000+64<<10+64<<10+128<<10) + 100*3000; all.OriginBytes != want {
		t.Errorf("every repeat from a peer: %d origin bytes, want each range once (%d)", all.OriginBytes, want)
	}
	p := params(100)
	p.P2PHit = 0
	none := sim(t, P2P, p)
	if direct := sim(t, Direct, p); none.OriginBytes != direct.OriginBytes || none.OriginRequests != direct.OriginRequests {
		t.Errorf("no peer hits: %+v, want direct's %+v", none, direct)
	}
	p.P2PHit = 0.5
	if half := sim(t, P2P, p); half.OriginBytes <= all.OriginBytes || half.OriginBytes >= none.OriginBytes {
		t.Errorf("half the repeats from peers: %d origin bytes, want between %d and %d", half.OriginBytes, all.OriginBytes, none.OriginBytes)
	}
}

func TestAllReady(t *testing.T) {
	p := params(1000)
	p.OriginBandwidth = 1e7 // 10 MB/s: 1000 nodes x 129 KiB before ready take 13 s
	if r := sim(t, Direct, p); r.AllReady < 13 || r.AllReady > 14 {
		t.Errorf("direct, slow origin: all ready at %.1f s, want the origin's 13.2 s", r.AllReady)
	}
	if r := sim(t, PullThrough, p); r.AllReady != p.Spread+1 {
		t.Errorf("through a fast cache: all ready at %.1f s, want the last start + 1 s", r.AllReady)
	}
	if r := sim(t, Direct, params(1)); r.AllReady != 1 {
		t.Errorf("one node: ready at %.1f s, want its own 1 s", r.AllReady)
	}
}

func TestPeakRate(t *testing.T) {
	p := params(10)
	p.Spread = 0
	// Every node's 3 lookups and 3 requests before 1 s fall in second 0.
	if r := sim(t, Direct, p); r.PeakRate != 60 {
		t.Errorf("peak %d requests/s, want 60", r.PeakRate)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := Simulate(trace(), Direct, Params{}); err == nil || !strings.Contains(err.Error(), "nodes") {
		t.Errorf("no nodes: %v", err)
	}
	tr := trace()
	tr.Requests = append(tr.Requests, Request{Blob: "other", Len: 1})
	if _, err := Simulate(tr, Direct, params(1)); err == nil || !strings.Contains(err.Error(), "other") {
		t.Errorf("unsized blob: %v", err)
	}
}
