package harness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRows: medians per image, state, containerd, link and mode; failed
// runs left out and counted; the speedup against the full pull of the same
// node state.
func TestRows(t *testing.T) {
	s := func(mode Mode, state NodeState, ready time.Duration, bytes int64, err string) Sample {
		return Sample{Image: "img", Mode: mode, State: state, Containerd: "c", Link: "l", Ready: ready,
			BeforeReady: traffic{Bytes: bytes}, Total: &traffic{Bytes: 2 * bytes}, Err: err}
	}
	rows := Rows([]Sample{
		s(Full, Fresh, 9*time.Second, 100, ""), s(Lazy, Fresh, 3*time.Second, 10, ""),
		s(Full, Fresh, 8*time.Second, 100, ""), s(Lazy, Fresh, 5*time.Second, 30, ""),
		s(Full, Fresh, 7*time.Second, 100, ""), s(Lazy, Fresh, time.Second, 20, "boom"),
		s(Full, SharedBase, time.Second, 0, ""), s(Lazy, SharedBase, 2*time.Second, 1, ""),
	})
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4: %+v", len(rows), rows)
	}
	full, lazy, sharedLazy := rows[0], rows[1], rows[3]
	if full.Ready != 8*time.Second || full.Runs != 3 || full.Speedup != 1 {
		t.Errorf("full row: %+v", full)
	}
	// The failed run is left out: median of 3 s and 5 s.
	if lazy.Ready != 4*time.Second || lazy.Runs != 2 || lazy.Failed != 1 || lazy.BeforeReady.Bytes != 20 || lazy.Total.Bytes != 40 {
		t.Errorf("lazy row: %+v", lazy)
	}
	if lazy.Speedup != 2 {
		t.Errorf("lazy speedup %v, want 2 (8 s / 4 s)", lazy.Speedup)
	}
	if sharedLazy.State != SharedBase || sharedLazy.Speedup != 0.5 {
		t.Errorf("shared-base lazy row: %+v, want a speedup of 0.5 against the shared-base full pull", sharedLazy)
	}
}

// TestCRILogReader: the ready line is found with containerd's timestamp
// across reads of a growing log, a line cut in two included.
func TestCRILogReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	r := &criLogReader{path: path}
	if _, ok, err := r.find(ReadyLine); ok || err != nil {
		t.Fatalf("no log yet: found %v, %v", ok, err)
	}
	write := func(s string) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write("2026-12-06T15:00:00.100000000Z stdout F starting\n2026-12-06T15:00:00.2")
	if _, ok, err := r.find(ReadyLine); ok || err != nil {
		t.Fatalf("before the ready line: found %v, %v", ok, err)
	}
	write("50000000Z stdout F " + ReadyLine + "\n")
	ts, ok, err := r.find(ReadyLine)
	if err != nil || !ok {
		t.Fatalf("ready line not found: %v, %v (read %q)", ok, err, r.output())
	}
	if want := time.Date(2026, 12, 6, 15, 0, 0, 250_000_000, time.UTC); !ts.Equal(want) {
		t.Errorf("ready at %v, want %v", ts, want)
	}
}
