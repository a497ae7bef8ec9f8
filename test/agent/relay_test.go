package agent

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// TestRelayDied: the documented limit of the portable attach. While sluiced
// is down, the relay between nbdfuse and sluiced's socket dies, so the
// device can no longer read. The restarted sluiced must not adopt that
// device: a new container of the image gets a fresh image mount and a
// correct root filesystem, and once every container, pod and image is
// removed, nothing is left, old device included.
func TestRelayDied(t *testing.T) {
	e := getEnv(t)
	n := newNode(t, e, nodeOpts{})
	a := e.images[repoA]
	n.pull(a.ref)
	pod, podCfg := n.runPod("relay")
	id := n.createContainer(pod, podCfg, "old", a.ref, "/bin/sleep", "3600")
	n.crictl("start", id)

	n.agent.stop(t)
	var relays []int
	for _, p := range leakcheck.Procs(n.agent.root) {
		if filepath.Base(p.Args[0]) == "nbdkit" {
			relays = append(relays, p.PID)
		}
	}
	if len(relays) != 1 {
		t.Fatalf("want one relay (nbdkit) for the one image mount; processes: %v", leakcheck.Procs(n.agent.root))
	}
	if err := syscall.Kill(relays[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(10*time.Second, func() bool { return !leakcheck.Alive(relays[0]) }); err != nil {
		t.Fatalf("relay %d still there after SIGKILL", relays[0])
	}
	if err := n.agent.start(e.sluiced); err != nil {
		t.Fatal(err)
	}
	n.checkRootfs(pod, podCfg, "new", a)
	if v := n.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v after the restart, want 1 (a new one)", v)
	}

	for _, c := range strings.Fields(n.crictl("ps", "-a", "-q")) {
		n.crictl("rm", "-f", c)
	}
	n.crictl("rmp", "-f", pod)
	n.crictl("rmi", a.ref, sandboxRef)
	n.assertNothingLeft(60 * time.Second)
}
