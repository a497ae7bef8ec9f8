package agent

import (
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/internal/debregistry"
	"github.com/sluice-project/sluice/test/testutil"
)

// blobGETs returns the digests of the blobs GET since mark (in any
// repository), and the new mark.
func (e *env) blobGETs(t *testing.T, mark int) (map[string]int, int) {
	t.Helper()
	return blobGETsOf(t, e.registry, mark)
}

// blobGETsOf returns how many times each blob was GET from reg since mark,
// and the mark to pass next.
func blobGETsOf(t *testing.T, reg *debregistry.Registry, mark int) (map[string]int, int) {
	t.Helper()
	reqs, err := reg.Requests(mark)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, q := range reqs {
		if _, d := q.Blob(); d != "" && q.Method == "GET" {
			got[d]++
		}
	}
	return got, mark + len(reqs)
}

// mark returns the number of requests the registry has answered so far.
func (e *env) mark(t *testing.T) int {
	t.Helper()
	reqs, err := e.registry.Requests(0)
	if err != nil {
		t.Fatal(err)
	}
	return len(reqs)
}

// checkNoLayerDownloads fails the test if any blob GET since mark is a
// layer of ti, or any blob but ti's config and its artifact's blobs.
func (e *env) checkNoLayerDownloads(t *testing.T, mark int, ti *testImage, what string) {
	t.Helper()
	got, _ := e.blobGETs(t, mark)
	layers := map[string]bool{}
	for _, l := range ti.layers {
		layers[l] = true
	}
	for d, n := range got {
		switch {
		case layers[d]:
			t.Errorf("%s downloaded layer blob %s (%d GETs)", what, d, n)
		case d != ti.config && !e.artifactBlobs[d]:
			t.Errorf("%s downloaded blob %s, neither the image config nor a blob of its artifact", what, d)
		}
	}
}

// TestCRIPullStreams: a CRI pull of a converted image downloads no layer
// (the registry's access log says so), a container of it runs and sees
// the image's files, and sluiced counts the bytes it fetched. On each
// containerd version with its own config, and on 2.x with 1.6's config (a
// node upgraded without touching it), whose CRI pulls another way.
func TestCRIPullStreams(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		testCRIPullStreams(t, e, nodeOpts{containerd: ctrd})
	})
	t.Run(containerdtest.V2.String()+"-config2", func(t *testing.T) {
		testutil.Require(t, testutil.Check(containerdtest.V2.String(), containerdtest.V2.Available))
		testCRIPullStreams(t, e, nodeOpts{containerd: containerdtest.V2, configVersion: 2})
	})
}

func testCRIPullStreams(t *testing.T, e *env, opts nodeOpts) {
	n := newNode(t, e, opts)
	a := e.images[repoA]
	mark := e.mark(t)
	n.pull(a.ref)
	e.checkNoLayerDownloads(t, mark, a, "crictl pull of the converted image")
	if opts.containerd == containerdtest.V2 {
		// 2.x's CRI pulls through the transfer service by default, with
		// client.Pull (as 1.6) when its config has
		// disable_snapshot_annotations = false or registry mirrors.
		want := "using transfer service"
		if opts.configVersion == 2 {
			want = "using client.Pull()"
		}
		if !strings.Contains(n.containerd.Log(), want) {
			t.Errorf("containerd 2.x's CRI did not pull %s (not in its debug log)", want)
		}
	}
	if v := n.metric("sluice_placeholders_total"); v < float64(len(a.layers)) {
		t.Errorf("sluice_placeholders_total = %v after pulling %d layers", v, len(a.layers))
	}

	pod, podCfg := n.runPod("cri")
	out := n.runToExit(pod, podCfg, "hello", a.ref, "/bin/sh", "-c", "cat /app/name && sha256sum /app/a-data.bin")
	want := "image A\n" + a.listing.sha("/app/a-data.bin") + "  /app/a-data.bin"
	if strings.TrimSpace(out) != want {
		t.Errorf("container output %q, want %q", out, want)
	}
	n.checkRootfs(pod, podCfg, "list", a)
	// Running containers reads blocks, but still no layer.
	e.checkNoLayerDownloads(t, mark, a, "running containers of the converted image")
	if v := n.metric("sluice_fetched_bytes_total"); v <= 0 {
		t.Errorf("sluice_fetched_bytes_total = %v after containers read the image", v)
	}
	if v := n.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v, want 1", v)
	}
}
