package harness

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testenv"
)

// TestCheckTargets: each target is computed from the medians, on the rows
// it names, and passes or fails on its bound.
func TestCheckTargets(t *testing.T) {
	s := func(image string, mode Mode, state NodeState, link string, ready time.Duration, fetched, read int64) Sample {
		return Sample{Image: image, Mode: mode, State: state, Containerd: "c", Link: link, Ready: ready,
			BeforeReady: traffic{Bytes: fetched}, AgentRead: read}
	}
	sec := time.Second
	rows := Rows([]Sample{
		s("data", Full, Fresh, "1G-20ms", 30*sec, 2<<30, 0), s("data", Lazy, Fresh, "1G-20ms", 2*sec, 60<<20, 20<<20),
		s("data", Full, Fresh, "1G-2ms", 30*sec, 2<<30, 0), s("data", Lazy, Fresh, "1G-2ms", 20*sec, 60<<20, 20<<20),
		s("numpy", Full, Fresh, "100M-20ms", 40*sec, 0, 0), s("numpy", Lazy, Fresh, "100M-20ms", 10*sec, 10<<20, 10<<20),
		s("numpy", Full, SharedBase, "100M-20ms", sec, 0, 0), s("numpy", Lazy, SharedBase, "100M-20ms", 5*sec, 0, 1<<20),
		s("busybox", Full, Fresh, "1G-2ms", 10*sec, 0, 0), s("busybox", Lazy, Fresh, "1G-2ms", 10500*time.Millisecond, 1, 1),
		s("numpy", NoBackground, Fresh, "100M-20ms", 8*sec, 5<<20, 10<<20),
		s("busybox", NoBackground, Fresh, "1G-2ms", 10*sec, 1, 1),
	})
	got := CheckTargets(rows)
	find := func(prefix, image, link string, state NodeState) Target {
		t.Helper()
		i := slices.IndexFunc(got, func(g Target) bool {
			return strings.HasPrefix(g.Name, prefix) && g.Image == image && g.Link == link && g.State == state
		})
		if i < 0 {
			t.Fatalf("no target %q on %s %s %s in %+v", prefix, image, link, state, got)
		}
		return got[i]
	}
	for _, c := range []struct {
		prefix, image, link string
		state               NodeState
		measured            float64
		pass                bool
	}{
		{"the 2 GiB image", "data", "1G-20ms", Fresh, 15, true},
		{"python3 with numpy", "numpy", "100M-20ms", Fresh, 4, false},
		{"busybox", "busybox", "1G-2ms", Fresh, 1.05, true},
		{"bytes fetched", "data", "1G-20ms", Fresh, 3, false},
		{"bytes fetched", "numpy", "100M-20ms", Fresh, 1, true},
		{"shared-base", "numpy", "100M-20ms", SharedBase, 0.5, true},
		{"the default config's time", "numpy", "100M-20ms", Fresh, 1.25, false},
		{"the default config's time", "busybox", "1G-2ms", Fresh, 1.05, true},
	} {
		g := find(c.prefix, c.image, c.link, c.state)
		if diff := g.Measured - c.measured; diff > 1e-9 || diff < -1e-9 || g.Pass != c.pass {
			t.Errorf("%s on %s %s: measured %v pass %v, want %v and %v", c.prefix, c.image, c.link, g.Measured, g.Pass, c.measured, c.pass)
		}
	}
	// The 10x target is at 1G-20ms only; full pull rows are never checked.
	for _, g := range got {
		if strings.HasPrefix(g.Name, "the 2 GiB image") && g.Link != "1G-20ms" {
			t.Errorf("2 GiB target checked on %s", g.Link)
		}
	}
	// Only lazy rows are checked: the lazy-nobg rows are not, and the
	// 5% target only where a lazy-nobg row is.
	for _, g := range got {
		if strings.HasPrefix(g.Name, "the default config's time") && g.Image == "data" {
			t.Errorf("5%% target checked on data, which has no lazy-nobg row")
		}
	}
	if n := len(got); n != 10 {
		t.Errorf("%d targets checked, want 10: %+v", n, got)
	}
}

// TestDefaultPlan: a default run measures each image on its own links,
// the union in Links order, and the whole matrix stays available.
func TestDefaultPlan(t *testing.T) {
	links, per, err := DefaultPlan(RecipeNames())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Name)
	}
	if want := []string{"100M-20ms", "1G-2ms", "1G-20ms"}; !slices.Equal(names, want) {
		t.Errorf("default links %v, want %v", names, want)
	}
	for im, want := range map[string][]string{
		"busybox": DefaultLinks, "python3": DefaultLinks, "numpy": {"100M-20ms"}, "data": {"1G-20ms"},
	} {
		if !slices.Equal(per[im], want) {
			t.Errorf("%s on %v, want %v", im, per[im], want)
		}
	}
	cfg := Config{Images: RecipeNames(), Links: links, ImageLinks: per, Modes: []Mode{Full, Lazy, Profile},
		States: []NodeState{Fresh}, Containerds: nil, Runs: 1}
	if cfg.measures("data", "1G-2ms") || !cfg.measures("data", "1G-20ms") {
		t.Error("data measured off its link")
	}
	if _, _, err := DefaultPlan([]string{"nope"}); err == nil {
		t.Error("unknown image accepted")
	}
	all, err := ParseLinks("all")
	if err != nil || len(all) != len(Links) {
		t.Errorf("-links all: %v, %v", all, err)
	}
}

// TestPlanned: mode lazy-nobg runs on fresh nodes only, profile never, and
// a default run narrows the shared-base state and lazy-nobg to the images
// and containerd it names.
func TestPlanned(t *testing.T) {
	v1, v2 := testenv.Containerd16, testenv.Containerd2
	all := Config{}
	narrow := Config{SharedBaseImages: []string{"python3"}, DetailContainerds: []testenv.ContainerdVersion{v1}}
	for _, c := range []struct {
		cfg   *Config
		image string
		mode  Mode
		state NodeState
		v     testenv.ContainerdVersion
		want  bool
	}{
		{&all, "busybox", Lazy, SharedBase, v2, true},
		{&all, "busybox", NoBackground, Fresh, v2, true},
		{&all, "busybox", NoBackground, SharedBase, v1, false},
		{&all, "busybox", Profile, Fresh, v1, false},
		{&narrow, "busybox", Lazy, SharedBase, v1, false},
		{&narrow, "python3", Full, SharedBase, v1, true},
		{&narrow, "python3", Full, SharedBase, v2, false},
		{&narrow, "python3", NoBackground, Fresh, v2, false},
		{&narrow, "python3", NoBackground, Fresh, v1, true},
		{&narrow, "busybox", Lazy, Fresh, v2, true},
	} {
		if got := c.cfg.planned(c.image, c.mode, c.state, c.v); got != c.want {
			t.Errorf("planned(%s, %s, %s, %s) with %+v = %v, want %v", c.image, c.mode, c.state, c.v, *c.cfg, got, c.want)
		}
	}
	cfg := narrow
	cfg.Images, cfg.Links, cfg.Runs = []string{"busybox", "python3"}, Links[:1], 2
	cfg.Modes, cfg.States = []Mode{Full, Lazy, NoBackground, Profile}, NodeStates
	cfg.Containerds = []testenv.ContainerdVersion{v1, v2}
	// busybox: fresh full+lazy on both, lazy-nobg on 1.6 = 5; python3: the
	// same plus full+lazy shared-base on 1.6 = 7; two runs each.
	if got := newProgress(cfg).total; got != 24 {
		t.Errorf("runs planned: %d, want 24", got)
	}
}
