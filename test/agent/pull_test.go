package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"time"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
)

// sluicePull runs `sluice pull --plain-http` against the node's containerd
// in namespace ns and returns its output and error.
func (n *node) sluicePull(ns, image string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := n.e.run(ctx, n.e.sluice, "pull", "--plain-http", "--address", n.containerd.Address, "--namespace", ns, image)
	return string(out), err
}

// ctrRun runs a container of image with ctr (snapshotter sluice) to exit
// and returns its output.
func (n *node) ctrRun(ns, image, id string, command ...string) string {
	n.t.Helper()
	args := append([]string{"run", "--rm", "--snapshotter", n.opts.snapshotter, image, id}, command...)
	return n.ctr(ns, args...)
}

// TestSluicePullStreams: `sluice pull` (containerd's pull with CRI's
// snapshot labels) of a converted image downloads no layer, and `ctr run
// --snapshotter sluice` of it prints what the image holds.
func TestSluicePullStreams(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		n := newNode(t, e, nodeOpts{containerd: ctrd, noSandbox: true})
		a := e.images[repoA]
		mark := e.mark(t)
		out, err := n.sluicePull("default", a.ref)
		if err != nil {
			t.Fatalf("sluice pull: %v\n%s", err, out)
		}
		if !strings.Contains(out, a.digest) {
			t.Errorf("sluice pull printed %q, not the image's digest %s", out, a.digest)
		}
		e.checkNoLayerDownloads(t, mark, a, "sluice pull of the converted image")

		got := n.ctrRun("default", a.ref, "ctr-run-a", "/bin/sh", "-c", "cat /app/name /usr/share/shared/text-03.txt && sha256sum /usr/share/shared/random-1.bin")
		want := fmt.Sprintf("image A\ntext 3, replaced by A\n%s  /usr/share/shared/random-1.bin",
			a.listing.sha("/usr/share/shared/random-1.bin"))
		if strings.TrimSpace(got) != want {
			t.Errorf("ctr run printed %q, want %q", got, want)
		}
		l, err := parseListing(n.ctrRun("default", a.ref, "ctr-list-a", "/bin/sh", "-c", listScript))
		if err != nil {
			t.Fatal(err)
		}
		if d := a.listing.diff(l, 30); len(d) > 0 {
			t.Errorf("ctr run: root filesystem differs from the reference:\n%s", strings.Join(d, "\n"))
		}
		e.checkNoLayerDownloads(t, mark, a, "ctr run of the streamed image")
		if v := n.metric("sluice_fetched_bytes_total"); v <= 0 {
			t.Errorf("sluice_fetched_bytes_total = %v after containers read the image", v)
		}
	})
}
