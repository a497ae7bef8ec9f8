package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/sluice-project/sluice/blockcache"
	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/snapshot"
)

// TestLookupErrorReasons: each failure to find an artifact becomes the
// reason the snapshotter counts, and names the registry when it is at fault.
func TestLookupErrorReasons(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, tc := range []struct {
		err           error
		reason        string
		namesRegistry bool
	}{
		{fmt.Errorf("%w for r/app@sha256:x", imageconv.ErrNoArtifact), "no artifact", false},
		{fmt.Errorf("index blob sha256:y: %w: bad magic", imageconv.ErrBadIndex), "artifact index corrupt", false},
		{fmt.Errorf("listing referrers: %w", refused), "registry unreachable", true},
		{&transport.Error{StatusCode: http.StatusServiceUnavailable}, "registry unreachable", true},
		{&transport.Error{StatusCode: http.StatusUnauthorized}, "registry denied access", true},
		{&transport.Error{StatusCode: http.StatusForbidden}, "registry denied access", true},
		{errors.New("something else"), "artifact lookup failed", true},
	} {
		err := lookupError("registry.example:5000", tc.err)
		if !errors.Is(err, snapshot.ErrNotStreamable) {
			t.Errorf("%v: %v is not ErrNotStreamable", tc.err, err)
		}
		if got := snapshot.Reason(err); got != tc.reason {
			t.Errorf("%v: reason %q, want %q", tc.err, got, tc.reason)
		}
		if named := strings.Contains(err.Error(), "registry registry.example:5000"); named != tc.namesRegistry {
			t.Errorf("%v: message %q names the registry: %v, want %v", tc.err, err, named, tc.namesRegistry)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%v: the cause is lost in %v", tc.err, err)
		}
	}
}

// TestImageTotals: counters of several images add up, and the fault
// latency histogram becomes cumulative buckets.
func TestImageTotals(t *testing.T) {
	hist := func(counts ...uint64) blockcache.Histogram {
		h := blockcache.Histogram{Bounds: blockcache.FaultLatencyBounds, Counts: make([]uint64, len(blockcache.FaultLatencyBounds)+1)}
		for i, c := range counts {
			h.Counts[i] = c
			h.Count += c
		}
		h.Sum = time.Duration(h.Count) * time.Millisecond
		return h
	}
	var tot imageTotals
	tot.add(blockcache.Stats{BytesFetched: 100, CacheHits: 3, CacheMisses: 1, FaultLatency: hist(1, 0, 2)})
	tot.add(blockcache.Stats{BytesFetched: 50, CacheHits: 1, CacheMisses: 2, FaultLatency: hist(0, 4)})
	if tot.fetchedBytes != 150 || tot.hits != 4 || tot.misses != 3 || tot.faultCount != 7 {
		t.Errorf("totals %+v", tot)
	}
	b := tot.faultBuckets()
	bounds := blockcache.FaultLatencyBounds
	if b[bounds[0].Seconds()] != 1 || b[bounds[1].Seconds()] != 5 || b[bounds[2].Seconds()] != 7 || b[bounds[len(bounds)-1].Seconds()] != 7 {
		t.Errorf("buckets %v", b)
	}
	if tot.faultSum != 0.007 {
		t.Errorf("sum %v s, want 0.007", tot.faultSum)
	}
}

// TestPruneMemos: memos of images not served, older than the age given,
// go; fresh ones and those of served images stay.
func TestPruneMemos(t *testing.T) {
	dir := t.TempDir()
	s := &registrySource{memo: artifactMemo{dir: dir}, exports: map[string]*sourceExport{}}
	served := snapshot.ImageRef{Ref: "r/served:1", ManifestDigest: "sha256:aa"}
	oldUnused := snapshot.ImageRef{Ref: "r/gone:1", ManifestDigest: "sha256:bb"}
	fresh := snapshot.ImageRef{Ref: "r/new:1", ManifestDigest: "sha256:cc"}
	s.exports["k"] = &sourceExport{memos: map[snapshot.ImageRef]bool{served: true}}
	old := time.Now().Add(-48 * time.Hour)
	for _, img := range []snapshot.ImageRef{served, oldUnused, fresh} {
		if err := os.WriteFile(s.memo.path(img), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if img != fresh {
			if err := os.Chtimes(s.memo.path(img), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.pruneMemos(24 * time.Hour)
	for img, want := range map[snapshot.ImageRef]bool{served: true, oldUnused: false, fresh: true} {
		if _, err := os.Stat(s.memo.path(img)); (err == nil) != want {
			t.Errorf("%s: memo kept %v, want %v", img, err == nil, want)
		}
	}
}
