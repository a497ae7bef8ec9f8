package harness

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testenv"
	"github.com/sluice-project/sluice/test/testutil"
)

// TestSmoke runs the harness end to end as `make bench-startup` does, on
// the smallest matrix: busybox, one cold run of each mode, containerd 1.6,
// one link, page cache left alone. It checks what the numbers rest on: the
// full pull fetched the image's layer through the proxy, the lazy start
// fetched no layer blob yet read chunks (sluiced counted them) and its
// background fetch completed the image, both reached the ready line, the
// agent counted the bytes read through its device, and the report has
// their rows, the profile row and the busybox target. The lazy-nobg start
// (background fetch off) streams too and leaves the total unknown. busybox
// is smaller than sluiced's default stream_min_size, so the agent gets
// "0": what the smoke test checks is the lazy path's machinery (a default
// run measures the default, under which busybox is pulled the ordinary
// way).
func TestSmoke(t *testing.T) {
	images := []string{"busybox"}
	testutil.Require(t, testutil.Root, testutil.Tool(Tools(images)...), testutil.Device("/dev/fuse"), testutil.Loop)
	ctx := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).WithContext(context.Background())
	work := t.TempDir()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, err := RepoRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	bins, err := Build(ctx, filepath.Join(work, "bin"), raceBuild)
	if err != nil {
		t.Fatal(err)
	}
	links, err := ParseLinks("1G-2ms")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Images:      images,
		Modes:       []Mode{Full, Lazy, NoBackground, Profile},
		Containerds: []testenv.ContainerdVersion{testenv.Containerd16},
		Links:       links,
		Runs:        1,
		Binaries:    bins,
		WorkDir:     filepath.Join(work, "state"),
		CacheDir:    filepath.Join(work, "cache"),
		RepoRoot:    root,
		AgentFields: "stream_min_size = \"0\"\n",
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Images) != 1 || rep.Images[0].LayerBytes <= 0 || rep.Images[0].Artifact == "" {
		t.Fatalf("images: %+v", rep.Images)
	}
	layerBytes := rep.Images[0].LayerBytes
	got := map[Mode]Sample{}
	for _, s := range rep.Samples {
		if s.Err != "" {
			t.Errorf("%s run failed: %s", s.Mode, s.Err)
			continue
		}
		got[s.Mode] = s
		if s.Ready <= 0 || s.Ready < s.Pull {
			t.Errorf("%s: ready after %v, pull took %v", s.Mode, s.Ready, s.Pull)
		}
		if s.BeforeReady.Requests <= 0 {
			t.Errorf("%s: no request went through the proxy before ready", s.Mode)
		}
	}
	if len(rep.Samples) != 3 {
		t.Errorf("%d samples, want 3 (full, lazy and lazy-nobg; profile is not measured)", len(rep.Samples))
	}
	if t.Failed() {
		return
	}
	full, lazy := got[Full], got[Lazy]
	if full.BeforeReady.LayerBytes < layerBytes {
		t.Errorf("full pull fetched %d bytes of the layer before ready, the layer is %d", full.BeforeReady.LayerBytes, layerBytes)
	}
	if lazy.BeforeReady.LayerBytes != 0 {
		t.Errorf("lazy start fetched %d bytes of layer blobs; it should stream the artifact instead", lazy.BeforeReady.LayerBytes)
	}
	if lazy.AgentFetched <= 0 {
		t.Errorf("sluiced fetched %d bytes by the ready line; the container read nothing through it?", lazy.AgentFetched)
	}
	if lazy.AgentRead <= 0 {
		t.Errorf("sluiced served %d bytes of reads by the ready line (sluice_read_bytes_total); the container read nothing through it?", lazy.AgentRead)
	}
	if lazy.Total == nil || lazy.Total.Bytes < lazy.BeforeReady.Bytes {
		t.Errorf("lazy start: total %+v after the background fetch, %+v before ready", lazy.Total, lazy.BeforeReady)
	}
	if nobg := got[NoBackground]; nobg.Total != nil || nobg.AgentRead <= 0 || nobg.BeforeReady.LayerBytes != 0 {
		t.Errorf("lazy-nobg start: total %+v (want unknown: nothing completes the image), %d bytes read through the device, %d bytes of layer blobs fetched (want 0)", nobg.Total, nobg.AgentRead, nobg.BeforeReady.LayerBytes)
	}
	var md strings.Builder
	if err := rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(rep.Targets, func(g Target) bool { return g.Image == "busybox" && strings.HasPrefix(g.Name, "busybox") }); i < 0 {
		t.Errorf("no busybox target checked: %+v", rep.Targets)
	}
	if i := slices.IndexFunc(rep.Targets, func(g Target) bool { return strings.HasPrefix(g.Name, "the default config's time") }); i < 0 {
		t.Errorf("no target against background fetch off checked: %+v", rep.Targets)
	}
	for _, want := range []string{"## Targets", "| busybox | fresh | containerd1.6 | full |", "| busybox | fresh | containerd1.6 | lazy |", "| busybox | fresh | containerd1.6 | lazy-nobg |", "| busybox | fresh | containerd1.6 | profile | " + ProfileWaits} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, md.String())
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", md.String())
	}
}
