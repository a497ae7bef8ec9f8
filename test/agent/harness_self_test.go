package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
)

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestHarnessOverlayfs checks the harness itself against containerd's own
// overlayfs snapshotter (no sluiced): CRI pulls from the registry, pods
// run, and every image's root filesystem in a container lists exactly as
// its reference (umoci's unpack). Streamed pulls are held to the same
// references, so this shows the references and the listing are right.
func TestHarnessOverlayfs(t *testing.T) {
	e := getEnv(t)
	forEachContainerd(t, func(t *testing.T, ctrd containerdtest.Version) {
		n := newNode(t, e, nodeOpts{containerd: ctrd, snapshotter: "overlayfs"})
		mark := e.mark(t)
		pod, podCfg := n.runPod("harness")
		for _, repo := range []string{repoA, repoB, repoBase} {
			ti := e.images[repo]
			n.pull(ti.ref)
			n.checkRootfs(pod, podCfg, "list-"+strings.ReplaceAll(repo, "/", "-"), ti)
		}
		// The listing sees types, modes, owners, link targets and contents.
		ref := e.images[repoA].listing
		for p, want := range map[string]string{
			"/usr/share/shared/random-2.bin": "regular file 600 0 0 sha256:" + ref.sha("/usr/share/shared/hard-2.bin"),
			"/bin/sh":                        "symbolic link 777 0 0 -> busybox",
			"/tmp":                           "directory 1777 0 0",
			"/app/name":                      "regular file 644 0 0 sha256:" + sha256hex("image A\n"),
		} {
			if ref[p] != want {
				t.Errorf("reference of A: %s is %q, want %q", p, ref[p], want)
			}
		}
		for _, p := range []string{"/usr/share/shared/gone-in-a.txt", "/proc/self", "/dev/null"} {
			if _, ok := ref[p]; ok {
				t.Errorf("reference of A lists %s", p)
			}
		}
		// The listing must see what differs between images.
		if d := e.images[repoA].listing.diff(e.images[repoB].listing, 5); len(d) == 0 {
			t.Error("the references of A and B are equal")
		}
		// And a plain pull downloads every layer: the access log shows it.
		reqs, err := e.registry.Requests(mark)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, q := range reqs {
			if repo, d := q.Blob(); repo == repoA && q.Method == "GET" {
				got[d] = true
			}
		}
		for _, l := range e.images[repoA].layers {
			if !got[l] {
				t.Errorf("the access log shows no GET of A's layer %s", l)
			}
		}
	})
}
