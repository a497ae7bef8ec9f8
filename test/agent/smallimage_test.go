package agent

import (
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
)

// reasonSmall is the fallback reason of an image under stream_min_size
// (source.ReasonSmall), as the metrics label and the log give it.
const reasonSmall = "image smaller than stream_min_size"

// TestSmallImagePulledNormally: with sluiced's default stream_min_size, a
// converted image of a few KiB is pulled the ordinary way (its layers are
// downloaded, no image is mounted), counted as a fallback with the reason,
// logged at info naming the image and its size, and its pod runs on a
// correct root filesystem; under policy = "require" the same image
// streams instead of failing.
func TestSmallImagePulledNormally(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		a := e.images[repoA]
		t.Run("fallback", func(t *testing.T) {
			n := newNode(t, e, nodeOpts{containerd: ctrd, streamMinSize: "default"})
			mark := e.mark(t)
			n.pull(a.ref)
			got, _ := e.blobGETs(t, mark)
			for _, l := range a.layers {
				if got[l] == 0 {
					t.Errorf("the pull of a small image did not download layer %s", l)
				}
			}
			for d := range got {
				if e.artifactBlobs[d] {
					t.Errorf("the pull of a small image fetched artifact blob %s", d)
				}
			}
			m, err := n.agent.metrics()
			if err != nil {
				t.Fatal(err)
			}
			if v := m[`sluice_fallbacks_total{reason="`+reasonSmall+`"}`]; v != 1 {
				t.Errorf("sluice_fallbacks_total{reason=%q} = %v after one pull of a small image, want 1", reasonSmall, v)
			}
			if v := n.metric("sluice_image_mounts"); v != 0 {
				t.Errorf("sluice_image_mounts = %v after pulling a small image", v)
			}
			pod, podCfg := n.runPod("small")
			n.checkRootfs(pod, podCfg, "list", a)
			var line string
			for l := range strings.SplitSeq(n.agent.log(), "\n") {
				if strings.Contains(l, reasonSmall) {
					line = l
					break
				}
			}
			if line == "" || !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, repoA) || !strings.Contains(line, "bytes") {
				t.Errorf("no info line naming the small image, its size and the reason in sluiced's log; first match:\n%s", line)
			}
		})
		t.Run("require", func(t *testing.T) {
			n := newNode(t, e, nodeOpts{containerd: ctrd, policy: "require", streamMinSize: "default", noSandbox: true})
			mark := e.mark(t)
			if out, err := n.sluicePull("default", a.ref); err != nil {
				t.Fatalf("sluice pull of a small converted image under policy require: %v\n%s", err, out)
			}
			e.checkNoLayerDownloads(t, mark, a, "a small image's pull under policy require")
			if v := n.labelled("sluice_fallbacks_total") + n.labelled("sluice_refusals_total"); v != 0 {
				t.Errorf("%v fallbacks and refusals under policy require, want the image streamed", v)
			}
		})
	})
}
