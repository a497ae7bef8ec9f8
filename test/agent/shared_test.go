package agent

import (
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
)

// TestSharedBaseLayers: images A (converted) and B (not) share their two
// base layers, so their chain IDs; pulling A commits those as
// placeholders without files. Whatever the order of the pulls (each order
// on a fresh node), containers of A, of B, and of Base (only the two
// shared layers: its container runs on the intermediate snapshot A
// committed as a placeholder) must see exactly their reference root
// filesystems. On each containerd version (on 2.x one order only).
func TestSharedBaseLayers(t *testing.T) {
	e := getEnv(t)
	a := e.images[repoA]
	mark := e.mark(t)
	defer func() {
		got, _ := e.blobGETs(t, mark)
		if n := got[a.layers[2]]; n > 0 {
			t.Errorf("A's own top layer %s was downloaded %d times", a.layers[2], n)
		}
	}()
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		testSharedBaseLayers(t, e, ctrd)
	})
}

func testSharedBaseLayers(t *testing.T, e *env, ctrd containerdtest.Version) {
	a, b, base := e.images[repoA], e.images[repoB], e.images[repoBase]
	orders := [][]*testImage{{a, b, base}, {b, a, base}, {a, base}, {base, a}}
	if ctrd == containerdtest.V2 {
		// Only the order that goes through every case (placeholders,
		// an unconverted image on them, a container on an intermediate
		// one), to keep the suite's time down.
		orders = orders[:1]
	}
	for _, order := range orders {
		var names []string
		for _, ti := range order {
			names = append(names, ti.ref[strings.Index(ti.ref, "/")+1:])
		}
		t.Run(strings.ReplaceAll(strings.Join(names, "-then-"), "/", "_"), func(t *testing.T) {
			n := newNode(t, e, nodeOpts{containerd: ctrd})
			for _, ti := range order {
				n.pull(ti.ref)
			}
			// Whatever came first, A is streamed: its top layer is
			// never downloaded and it has an image mount.
			if v := n.metric("sluice_image_mounts"); v != 1 {
				t.Errorf("sluice_image_mounts = %v after the pulls, want 1 (A streamed)", v)
			}
			pod, podCfg := n.runPod("shared")
			// Check in the reverse order: the last image pulled first, so
			// that the earlier ones are used after the later ones changed
			// the shared snapshots.
			for i := len(order) - 1; i >= 0; i-- {
				ti := order[i]
				n.checkRootfs(pod, podCfg, "list-"+strings.ReplaceAll(ti.ref[strings.Index(ti.ref, "/")+1:strings.LastIndex(ti.ref, ":")], "/", "-"), ti)
			}
			if order[0] == a {
				// A's lower layers were placeholders; something used them
				// as a parent, so they must have been materialized.
				if v := n.metric("sluice_materializations_total"); v < 1 {
					t.Errorf("sluice_materializations_total = %v, although images were run on A's placeholders", v)
				}
			}
			if v := n.metric("sluice_materialization_failures_total"); v != 0 {
				t.Errorf("sluice_materialization_failures_total = %v", v)
			}
		})
	}
}
