package convertsvc

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestBurst: 20 pushes in one burst to the notifying registry, 15
// distinct images at once and 5 more pushes of the first one's digest
// (other tags) behind its first push, give
// 15 conversions, none twice (the service's counters and its log, one
// "converted" line per digest); at most --max-parallel run at once, the
// work dir stays within 2 x max-parallel x max-image-size, and the peak
// RSS of the service is reported (and bounded).
func TestBurst(t *testing.T) {
	e := getEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	type push struct {
		ti   *testImage
		dest string
	}
	var pushes []push
	images := map[string]string{} // digest -> repository
	for i := range 15 {
		ti := newImage(t, dir, fmt.Sprintf("burst-%02d", i), 2<<20)
		repo := fmt.Sprintf("burst/app-%02d", i)
		images[ti.digest] = e.notifying.Addr + "/" + repo
		pushes = append(pushes, push{ti, e.notifying.Addr + "/" + repo + ":v1"})
	}
	for i := range 5 {
		pushes = append(pushes, push{pushes[0].ti, fmt.Sprintf("%s/burst/app-00:again-%d", e.notifying.Addr, i)})
	}
	before, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	logBefore := len(e.svc.entries("converted"))

	// Watch the service while the burst runs.
	var maxRunning, maxQueued float64
	watching := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if m, err := e.svc.metrics(); err == nil {
				maxRunning = max(maxRunning, m["sluice_convert_running"])
				maxQueued = max(maxQueued, m["sluice_convert_queue_depth"])
			}
			select {
			case <-watching:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	// The 15 images are pushed at once. The repeats of the first one go
	// one after another behind its first push, still inside the burst:
	// docker-registry's filesystem driver does not survive two concurrent
	// uploads of one blob (or one manifest) into one repository ("digest
	// invalid", "manifest blob unknown"), which is the registry's limit,
	// not the service's; the repeats then put only the manifest again and
	// each sends one more notification for the digest already queued.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(pushes))
	wg.Go(func() {
		for _, i := range []int{0, 15, 16, 17, 18, 19} {
			if errs[i] = skopeoPush(ctx, pushes[i].ti, pushes[i].dest); errs[i] != nil {
				return
			}
		}
	})
	for i := 1; i < 15; i++ {
		wg.Go(func() { errs[i] = skopeoPush(ctx, pushes[i].ti, pushes[i].dest) })
	}
	wg.Wait()
	pushed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	err = waitFor(5*time.Minute, func() bool {
		m, err := e.svc.metrics()
		return err == nil && m[conversions("converted", "")]-before[conversions("converted", "")] >= 15 &&
			m["sluice_convert_queue_depth"] == 0 && m["sluice_convert_running"] == 0
	})
	if err != nil {
		t.Fatalf("the burst is not converted after 5 min:\n%s", e.svc.logTail(30))
	}
	all := time.Since(start)
	for _, repo := range images {
		if out, err := e.inspectSigned(ctx, repo+":v1"); err != nil {
			t.Errorf("%s has no artifact signed by the service: %v\n%s", repo, err, out)
		}
	}
	close(watching)
	<-watched
	after, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	delta := func(k string) float64 { return after[k] - before[k] }

	if n := delta(conversions("converted", "")); n != 15 {
		t.Errorf("%v conversions for 15 distinct images", n)
	}
	perDigest := map[string]int{}
	for _, l := range e.svc.entries("converted")[logBefore:] {
		d, _ := l["manifest"].(string)
		perDigest[d]++
	}
	for d, repo := range images {
		if perDigest[d] != 1 {
			t.Errorf("%s@%s converted %d times", repo, d, perDigest[d])
		}
	}
	if len(perDigest) != 15 {
		t.Errorf("the log says %d images were converted, want the 15 pushed", len(perDigest))
	}
	// The 5 pushes of a digest already queued: each a duplicate while its
	// job waits or runs, or found converted once it is done.
	if n := delta(received("events", "duplicate")) + delta(conversions("skipped", "already converted")); n < 5 {
		t.Errorf("%v of the 5 repeated pushes were deduplicated or found converted", n)
	}
	if maxRunning > maxParallel {
		t.Errorf("%v conversions ran at once, more than --max-parallel %d", maxRunning, maxParallel)
	}
	workBound := int64(2 * maxParallel * maxImageSize)
	peakWork := e.svc.peakWorkDir()
	if peakWork > workBound {
		t.Errorf("the work dir peaked at %d bytes, above 2 x max-parallel x max-image-size = %d", peakWork, workBound)
	}
	rss, err := e.svc.peakRSS()
	if err != nil {
		t.Fatal(err)
	}
	// Conversions buffer at most ~64 MiB of chunks each; the race
	// detector multiplies what a process uses several times.
	rssBound := int64(256<<20 + maxParallel*96<<20)
	if raceBuild {
		rssBound *= 4
	}
	if rss > rssBound {
		t.Errorf("the service's peak RSS is %d MiB, above %d MiB", rss>>20, rssBound>>20)
	}
	count := delta("sluice_convert_seconds_count")
	mean := 0.0
	if count > 0 {
		mean = delta("sluice_convert_seconds_sum") / count
	}
	t.Logf("burst: 20 pushes in %v; all 15 converted and idle %v after the first push; %v conversions, mean %.2f s each; at most %v running and %v queued; "+
		"work dir peak %.1f MiB (bound %d MiB); service peak RSS (VmHWM) %d MiB (race build: %v); %.1f MiB in, %.1f MiB out",
		pushed.Round(time.Millisecond), all.Round(time.Millisecond), count, mean, maxRunning, maxQueued,
		float64(peakWork)/(1<<20), workBound>>20, rss>>20, raceBuild,
		delta("sluice_convert_source_bytes_total")/(1<<20), delta("sluice_convert_artifact_bytes_total")/(1<<20))
	e.svc.checkRaces(t)
}
