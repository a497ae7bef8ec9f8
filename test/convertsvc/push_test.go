package convertsvc

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestPushConverts: a skopeo push to a registry whose notifications go to
// the service is converted without anything else: `sluice inspect --key`
// finds an artifact signed by the service's key within a bounded time, the
// events of the service's own pushes (artifact, signature, referrers
// indexes) queue nothing, and a CRI pull on a node that trusts only that
// key streams the image.
func TestPushConverts(t *testing.T) {
	e := getEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	ti := newImage(t, t.TempDir(), "push-app", 1<<20)
	image := e.notifying.Addr + "/push/app:v1"
	pushed := time.Now()
	if err := skopeoPush(ctx, ti, image); err != nil {
		t.Fatal(err)
	}
	_, out := e.waitConverted(t, image, 2*time.Minute)
	t.Logf("signed artifact found %v after the push:\n%s", time.Since(pushed).Round(time.Millisecond), out)
	e.svc.idle(t, time.Minute)
	after, err := e.svc.metrics()
	if err != nil {
		t.Fatal(err)
	}
	delta := func(k string) float64 { return after[k] - before[k] }
	if n := delta(conversions("converted", "")); n != 1 {
		t.Errorf("%v conversions for one push", n)
	}
	if n := delta(received("events", "own push")); n < 3 {
		t.Errorf("%v events of the service's own pushes dropped, want its artifact, signature and referrers indexes", n)
	}
	if n := delta(received("events", "queued")); n != 1 {
		t.Errorf("%v events queued for one push", n)
	}
	var found bool
	for _, l := range e.svc.entries("converted") {
		if l["image"] == e.notifying.Addr+"/push/app@"+ti.digest && l["signature"] != nil {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line says %s was converted and signed:\n%s", ti.digest, e.svc.logTail(20))
	}

	n := newNode(t, e, "", e.notifying.Addr)
	n.pull(image)
	if v := n.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v after the pull, want the image streamed from the service's artifact", v)
	}
	if !strings.Contains(n.log(), "export opened") {
		t.Errorf("sluiced opened no export:\n%s", n.log())
	}
}
