package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
)

// TestFallbackUnconverted: an image without an artifact is pulled the
// ordinary way through the same snapshotter (its layers are downloaded),
// its containers get a correct root filesystem, and sluiced counts the
// fallback with a reason.
func TestFallbackUnconverted(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		n := newNode(t, e, nodeOpts{containerd: ctrd})
		b := e.images[repoB]
		before := n.labelled("sluice_fallbacks_total")
		mark := e.mark(t)
		n.pull(b.ref)
		got, _ := e.blobGETs(t, mark)
		for _, l := range b.layers {
			if got[l] == 0 {
				t.Errorf("a fallback pull did not download layer %s", l)
			}
		}
		if after := n.labelled("sluice_fallbacks_total"); after <= before {
			t.Errorf("sluice_fallbacks_total went from %v to %v over the pull of an unconverted image", before, after)
		}
		m, err := n.agent.metrics()
		if err != nil {
			t.Fatal(err)
		}
		reasons := 0
		for k := range m {
			if strings.HasPrefix(k, "sluice_fallbacks_total{reason=") {
				reasons++
			}
		}
		if reasons == 0 {
			t.Error("sluice_fallbacks_total has no reason label")
		}
		if v := n.metric("sluice_image_mounts"); v != 0 {
			t.Errorf("sluice_image_mounts = %v after pulling only unconverted images", v)
		}
		pod, podCfg := n.runPod("fallback")
		n.checkRootfs(pod, podCfg, "list", b)
		if log := n.agent.log(); !strings.Contains(log, b.ref) && !strings.Contains(log, repoB) {
			t.Errorf("sluiced's log does not name the image it fell back for (%s)", b.ref)
		}
	})
}

// TestRequireRefuses: with policy = "require", pulling an image without an
// artifact fails, through CRI and through sluice pull, with a message that
// names the image and the reason, and sluiced counts the refusal.
func TestRequireRefuses(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		n := newNode(t, e, nodeOpts{containerd: ctrd, policy: "require", noSandbox: true})
		b := e.images[repoB]
		_, err := n.containerd.Crictl(context.Background(), "pull", b.ref)
		if err == nil {
			t.Fatal("crictl pull of an unconverted image succeeded under policy require")
		}
		checkRefusal(t, "crictl pull", err.Error(), b)
		out, err := n.sluicePull("default", b.ref)
		if err == nil {
			t.Fatalf("sluice pull of an unconverted image succeeded under policy require:\n%s", out)
		}
		checkRefusal(t, "sluice pull", out, b)
		if v := n.labelled("sluice_refusals_total"); v < 1 {
			t.Errorf("sluice_refusals_total = %v after refused pulls", v)
		}
		// A converted image is still pulled, streamed.
		a := e.images[repoA]
		if out, err := n.sluicePull("default", a.ref); err != nil {
			t.Fatalf("sluice pull of the converted image under policy require: %v\n%s", err, out)
		}
	})
}

// checkRefusal checks that msg names the image (by reference or
// repository) and says why: no artifact.
func checkRefusal(t *testing.T, what, msg string, ti *testImage) {
	t.Helper()
	repo := ti.ref[strings.Index(ti.ref, "/")+1 : strings.LastIndex(ti.ref, ":")]
	if !strings.Contains(msg, ti.ref) && !strings.Contains(msg, repo) {
		t.Errorf("%s: the error does not name the image %s:\n%s", what, ti.ref, msg)
	}
	if !strings.Contains(msg, "artifact") {
		t.Errorf("%s: the error does not say the image has no artifact:\n%s", what, msg)
	}
	t.Logf("%s: %s", what, msg)
}
