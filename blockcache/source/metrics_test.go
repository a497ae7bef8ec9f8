package source

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestCollectorReadBytes: sluice_read_bytes_total is the bytes reads were
// served, over open images and closed ones (a counter never goes down).
func TestCollectorReadBytes(t *testing.T) {
	e := newEnv(t)
	src := e.source()
	h, err := src.Open(context.Background(), e.app)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{4096, 10000} {
		if _, err := h.Image().ReadAt(make([]byte, n), 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := gatherCounter(t, src, "sluice_read_bytes_total"); got != 14096 {
		t.Errorf("sluice_read_bytes_total = %v with the image open, want 14096", got)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := gatherCounter(t, src, "sluice_read_bytes_total"); got != 14096 {
		t.Errorf("sluice_read_bytes_total = %v after Close, want 14096", got)
	}
}

// gatherCounter returns the value of the unlabelled counter name that
// src's collector exports.
func gatherCounter(t *testing.T, src *Source, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(src.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not exported", name)
	return 0
}
