package agent

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// TestRestart: sluiced is stopped (SIGTERM) or killed (SIGKILL) and
// started again while a container of a streamed image runs. The new
// process adopts the image mount (same mounts, loop device and device
// processes; nothing mounted twice, nothing leaked), the running container
// reads files it had not read before (so through the device, served by the
// new process), and a new container of the image starts.
// On each containerd version: its gRPC client of the proxy snapshotter
// must get through to the new process.
func TestRestart(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(sig.String(), func(t *testing.T) { testRestart(t, e, ctrd, sig) })
		}
	})
}

func testRestart(t *testing.T, e *env, ctrd containerdtest.Version, sig syscall.Signal) {
	n := newNode(t, e, nodeOpts{containerd: ctrd})
	a := e.images[repoA]
	n.pull(a.ref)
	pod, podCfg := n.runPod("restart")
	id := n.createContainer(pod, podCfg, "reader", a.ref, "/bin/sleep", "3600")
	n.crictl("start", id)
	if got := n.crictl("exec", id, "/bin/cat", "/app/name"); got != "image A" {
		t.Fatalf("before the restart the container read %q from /app/name", got)
	}
	before, err := leakcheck.Find(n.agent.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(before.Mounts) == 0 || len(before.Loops) == 0 {
		t.Fatalf("no image mount or loop device before the restart:\n%s", before)
	}

	if sig == syscall.SIGTERM {
		n.agent.stop(t)
		if code := n.agent.proc.Cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("sluiced exited with status %d on SIGTERM", code)
		}
	} else {
		_ = n.agent.proc.Cmd.Process.Signal(sig)
		<-n.agent.proc.Done()
	}
	if err := n.agent.start(e.sluiced); err != nil {
		t.Fatal(err)
	}

	after, err := leakcheck.Find(n.agent.root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(points(before.Mounts), points(after.Mounts)) {
		t.Errorf("mounts before the restart:\n%s\nafter:\n%s", before, after)
	}
	if !slices.Equal(before.Loops, after.Loops) {
		t.Errorf("loop devices before the restart: %v, after: %v", before.Loops, after.Loops)
	}
	if !slices.Equal(pids(before.Procs), pids(after.Procs)) {
		t.Errorf("device processes before the restart: %v, after: %v (adopting keeps them)", before.Procs, after.Procs)
	}
	if v := n.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v after the restart, want 1 (adopted)", v)
	}

	// The running container reads every file of its image, most of them
	// for the first time.
	out, err := n.containerd.Crictl(context.Background(), "exec", id, "/bin/sh", "-c", listScript)
	if err != nil {
		t.Fatalf("the running container after the restart: %v", err)
	}
	got, err := parseListing(string(out))
	if err != nil {
		t.Fatal(err)
	}
	if d := a.listing.diff(got, 30); len(d) > 0 {
		t.Errorf("the running container's root filesystem after the restart differs from the reference:\n%s", strings.Join(d, "\n"))
	}

	// A new container of the image starts.
	out2 := n.runToExit(pod, podCfg, "after", a.ref, "/bin/cat", "/app/name")
	if strings.TrimSpace(out2) != "image A" {
		t.Errorf("a new container after the restart printed %q", out2)
	}
	// Still exactly one image mount, one device.
	final, err := leakcheck.Find(n.agent.root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(points(before.Mounts), points(final.Mounts)) || len(final.Loops) != len(before.Loops) {
		t.Errorf("after a new container: mounts and devices\n%s\nwant as before the restart:\n%s", final, before)
	}
}

func points(ms []leakcheck.Mount) []string {
	var p []string
	for _, m := range ms {
		p = append(p, m.String())
	}
	slices.Sort(p)
	return p
}

func pids(ps []leakcheck.Proc) []int {
	var p []int
	for _, x := range ps {
		p = append(p, x.PID)
	}
	slices.Sort(p)
	return p
}
