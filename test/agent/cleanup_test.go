package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"time"

	"github.com/sluice-project/sluice/test/internal/containerdtest"

	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// TestCleanup: once the containers, pods and images are removed through
// CRI (containerd then collects the snapshots), nothing of the images is
// left: no mount, loop device, nbdfuse or relay process, export, image
// mount or snapshot directory, while sluiced goes on running.
func TestCleanup(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		n := newNode(t, e, nodeOpts{containerd: ctrd})
		a, b := e.images[repoA], e.images[repoB]
		n.pull(a.ref)
		n.pull(b.ref)
		pod, podCfg := n.runPod("cleanup")
		n.runToExit(pod, podCfg, "a", a.ref, "/bin/cat", "/app/name")
		n.runToExit(pod, podCfg, "b", b.ref, "/bin/cat", "/app/name")
		// A long-running one too: removed while running.
		id := n.createContainer(pod, podCfg, "a-sleeps", a.ref, "/bin/sleep", "3600")
		n.crictl("start", id)

		// What there is before: the harness must see what it later says is gone.
		during, err := leakcheck.Find(n.agent.root)
		if err != nil {
			t.Fatal(err)
		}
		if len(during.Mounts) == 0 || len(during.Loops) == 0 || len(during.Procs) == 0 {
			t.Fatalf("with a streamed image in use, expected mounts, loop devices and processes under %s; found:\n%s", n.agent.root, during)
		}
		t.Logf("in use:\n%s", during)
		if len(n.containerd.Shims()) == 0 {
			t.Fatalf("no shim of this containerd found while its pod runs")
		}
		if out, err := exec.Command("nbdinfo", "--list", "nbd+unix:///?socket="+n.agent.nbd).CombinedOutput(); err != nil || !strings.Contains(string(out), "sha256:") {
			t.Fatalf("nbdinfo --list shows no export while the image is in use: %v\n%s", err, out)
		}

		for _, c := range strings.Fields(n.crictl("ps", "-a", "-q")) {
			n.crictl("rm", "-f", c)
		}
		n.crictl("rmp", "-f", pod)
		n.crictl("rmi", a.ref, b.ref, sandboxRef)

		err = waitFor(60*time.Second, func() bool {
			out, err := n.containerd.Ctr(context.Background(), "k8s.io", "snapshots", "--snapshotter", "sluice", "ls")
			return err == nil && len(strings.Split(strings.TrimSpace(string(out)), "\n")) == 1 // the header
		})
		if err != nil {
			t.Fatalf("containerd did not remove the snapshots: %s", n.ctr("k8s.io", "snapshots", "--snapshotter", "sluice", "ls"))
		}
		n.assertNothingLeft(30 * time.Second)
		// The same, as an operator would look: /proc/mounts and losetup -a.
		if b, err := os.ReadFile("/proc/mounts"); err != nil {
			t.Error(err)
		} else if lines := linesMentioning(string(b), n.dir); len(lines) > 0 {
			t.Errorf("/proc/mounts still lists:\n%s", strings.Join(lines, "\n"))
		}
		if out, err := exec.Command("losetup", "-a").CombinedOutput(); err != nil {
			t.Errorf("losetup -a: %v\n%s", err, out)
		} else if lines := linesMentioning(string(out), n.dir); len(lines) > 0 {
			t.Errorf("losetup -a still lists:\n%s", strings.Join(lines, "\n"))
		}
		// The pod's shim exits once its containers and sandbox are gone.
		if err := waitFor(30*time.Second, func() bool { return len(n.containerd.Shims()) == 0 }); err != nil {
			t.Errorf("shims of this containerd still running after every pod was removed: %v", n.containerd.Shims())
		}
		if v := n.metric("sluice_exports"); v != 0 {
			t.Errorf("sluice_exports = %v", v)
		}
		if v := n.metric("sluice_image_mounts"); v != 0 {
			t.Errorf("sluice_image_mounts = %v", v)
		}
		if out, err := exec.Command("nbdinfo", "--list", "nbd+unix:///?socket="+n.agent.nbd).CombinedOutput(); err != nil {
			t.Errorf("nbdinfo --list: %v\n%s", err, out)
		} else if strings.Contains(string(out), "sha256:") {
			t.Errorf("exports left:\n%s", out)
		}
		for _, sub := range []string{"snapshots", "images", "devices"} {
			ents, err := os.ReadDir(filepath.Join(n.agent.root, sub))
			if err != nil && !os.IsNotExist(err) {
				t.Error(err)
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if len(names) > 0 {
				t.Errorf("left in %s: %v", filepath.Join(n.agent.root, sub), names)
			}
		}
	})
}

// linesMentioning returns the lines of text that contain dir.
func linesMentioning(text, dir string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, dir) {
			out = append(out, l)
		}
	}
	return out
}
