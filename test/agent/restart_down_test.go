package agent

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRestartRegistryDown: once an image is fully in the cache, neither
// its running containers nor new ones need the registry, even across an
// agent restart: with the registry stopped, sluiced is restarted, the
// running container reads every file of its image, and a new container of
// the image starts with the whole root filesystem.
func TestRestartRegistryDown(t *testing.T) {
	e := getEnv(t)
	reg := startRegistry(t, filepath.Join(t.TempDir(), "registry"))
	ti := e.pushConverted(t, e.images[repoA], reg.Addr+"/offline/a:v1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := newNode(t, e, nodeOpts{registries: []string{reg.Addr}})
	n.pull(ti.ref)
	pod, podCfg := n.runPod("offline")
	id := n.createContainer(pod, podCfg, "reader", ti.ref, "/bin/sleep", "3600")
	n.crictl("start", id)
	// Background streaming fetches the rest of the image.
	var pct float64
	if err := waitFor(2*time.Minute, func() bool {
		pct = n.labelled("sluice_image_percent_complete")
		return pct >= 100
	}); err != nil {
		t.Fatalf("the image is %v%% in the cache after 2 min of background streaming", pct)
	}

	reg.Stop()
	n.agent.stop(t)
	if err := n.agent.start(e.sluiced); err != nil {
		t.Fatal(err)
	}
	out, err := n.containerd.Crictl(ctx, "exec", id, "/bin/sh", "-c", listScript)
	if err != nil {
		t.Fatalf("the running container, registry down, after the restart: %v", err)
	}
	got, err := parseListing(string(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := ti.listing.diff(got, 30); len(d) > 0 {
		t.Errorf("the running container's root filesystem differs from the reference:\n%s", strings.Join(d, "\n"))
	}
	n.checkRootfs(pod, podCfg, "new", ti)
	if v := n.metric("sluice_read_errors_total"); v != 0 {
		t.Errorf("sluice_read_errors_total = %v", v)
	}
}
