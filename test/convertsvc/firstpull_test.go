package convertsvc

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFirstPullConverts: with a registry that sends no notifications, the
// first pull of an image on a node falls back (no artifact) and the node
// asks the service, once; once converted, a pull on a second node streams,
// and that node asks nothing.
func TestFirstPullConverts(t *testing.T) {
	e := getEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ti := newImage(t, t.TempDir(), "pull-app", 1<<20)
	image := e.plain.Addr + "/pull/app:v1"
	if err := skopeoPush(ctx, ti, image); err != nil {
		t.Fatal(err)
	}
	before, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + e.svc.addr

	first := newNode(t, e, url, e.plain.Addr)
	first.pull(image)
	if v := first.metric("sluice_image_mounts"); v != 0 {
		t.Fatalf("sluice_image_mounts = %v on the first pull of an unconverted image", v)
	}
	if v := first.sample(`sluice_fallbacks_total{reason="no artifact"}`); v != 1 {
		t.Errorf("fallbacks for want of an artifact: %v, want 1", v)
	}
	took, _ := e.waitConverted(t, image, 2*time.Minute)
	t.Logf("signed artifact found %v after the first pull", took.Round(time.Millisecond))
	if err := waitFor(30*time.Second, func() bool { return first.sample(`sluice_convert_requests_total{result="sent"}`) == 1 }); err != nil {
		t.Errorf("the first node's requests: sent %v, failed %v, want 1 sent",
			first.sample(`sluice_convert_requests_total{result="sent"}`), first.sample(`sluice_convert_requests_total{result="failed"}`))
	}
	want := e.plain.Addr + "/pull/app@" + ti.digest
	var asked bool
	for _, l := range e.svc.entries("conversion request") {
		asked = asked || (l["image"] == want && l["result"] == "queued")
	}
	if !asked {
		t.Errorf("the service logged no request for %s:\n%s", want, e.svc.logTail(20))
	}
	if !strings.Contains(first.log(), "conversion requested") {
		t.Errorf("the node did not log its request")
	}

	second := newNode(t, e, url, e.plain.Addr)
	second.pull(image)
	if v := second.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v on a second node after the conversion, want the image streamed", v)
	}
	if v := second.metric("sluice_convert_requests_total"); v != 0 {
		t.Errorf("the second node made %v conversion requests for a converted image", v)
	}
	e.svc.idle(t, time.Minute)
	after, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if n := after[received("convert", "queued")] - before[received("convert", "queued")]; n != 1 {
		t.Errorf("%v requests queued, want the first node's one", n)
	}
	if n := after[conversions("converted", "")] - before[conversions("converted", "")]; n != 1 {
		t.Errorf("%v conversions, want 1", n)
	}
}
