package harness

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluice-project/sluice/test/testenv"
)

// Mode is how a node gets an image's root filesystem.
type Mode string

const (
	// Full is containerd's overlayfs snapshotter with a full pull: the
	// baseline.
	Full Mode = "full"
	// Lazy is sluiced as containerd's proxy snapshotter with its default
	// config.
	Lazy Mode = "lazy"
	// NoBackground is sluiced with its default config but background
	// fetch off (background_rate = "0"): what the default config's
	// background fetch costs the start is Lazy against it. It is measured
	// on fresh nodes only (on a SharedBase node the first image is
	// complete before the measured one starts, which needs background
	// fetch), and its total is unknown: nothing completes the image.
	NoBackground Mode = "lazy-nobg"
	// Profile is sluiced replaying the image's prefetch profile. Not
	// measured yet: it waits on issue 16 (record-and-replay prefetch).
	Profile Mode = "profile"
)

// Modes are every mode, in report order.
var Modes = []Mode{Full, Lazy, NoBackground, Profile}

// ProfileWaits is what the report says in the Profile mode's rows.
const ProfileWaits = "waits on issue 16 (record-and-replay prefetch)"

// ParseModes parses a comma-separated list of modes.
func ParseModes(s string) ([]Mode, error) {
	var out []Mode
	for _, f := range strings.Split(s, ",") {
		m := Mode(strings.TrimSpace(f))
		if !slices.Contains(Modes, m) {
			return nil, fmt.Errorf("mode %q: want full, lazy, lazy-nobg or profile", m)
		}
		out = append(out, m)
	}
	return out, nil
}

// NodeState is what the node ran before the measured pod.
type NodeState string

const (
	// Fresh: nothing; a new node.
	Fresh NodeState = "fresh"
	// SharedBase: another image with the same base (the image plus
	// another small top layer) ran to its ready line first, and, in the
	// lazy modes, its background fetch completed: the common case in a
	// cluster. The measured image is then the image plus its own small
	// top layer, so that a full pull has a layer left to fetch.
	SharedBase NodeState = "shared-base"
)

// NodeStates are every node state, in report order.
var NodeStates = []NodeState{Fresh, SharedBase}

// ParseStates parses a comma-separated list of node states.
func ParseStates(s string) ([]NodeState, error) {
	var out []NodeState
	for _, f := range strings.Split(s, ",") {
		st := NodeState(strings.TrimSpace(f))
		if !slices.Contains(NodeStates, st) {
			return nil, fmt.Errorf("node state %q: want fresh or shared-base", st)
		}
		out = append(out, st)
	}
	return out, nil
}

// Link is how the node reaches the registry: the throttle proxy's
// bandwidth and round-trip time.
type Link struct {
	Name          string
	BitsPerSecond int64
	RTT           time.Duration
}

// bandwidthFlag is throttleproxy's --bandwidth: bytes per second.
func (l Link) bandwidthFlag() string { return fmt.Sprint(l.BitsPerSecond / 8) }

func (l Link) String() string {
	bw := fmt.Sprintf("%d Mbit/s", l.BitsPerSecond/1e6)
	if l.BitsPerSecond >= 1e9 && l.BitsPerSecond%1e9 == 0 {
		bw = fmt.Sprintf("%d Gbit/s", l.BitsPerSecond/1e9)
	}
	return fmt.Sprintf("%s, %s RTT", bw, l.RTT)
}

// Links are the link profiles of the whole matrix.
var Links = []Link{
	{"100M-2ms", 100e6, 2 * time.Millisecond},
	{"100M-20ms", 100e6, 20 * time.Millisecond},
	{"1G-2ms", 1e9, 2 * time.Millisecond},
	{"1G-20ms", 1e9, 20 * time.Millisecond},
}

// DefaultLinks are the names of the links a default run measures: the
// slow link with a far registry, and the fast link with a near one.
var DefaultLinks = []string{"100M-20ms", "1G-2ms"}

// ParseLinks parses "default", "all" or a comma-separated list of link
// names.
func ParseLinks(s string) ([]Link, error) {
	var names []string
	switch s {
	case "default":
		names = DefaultLinks
	case "all":
		return slices.Clone(Links), nil
	default:
		names = strings.Split(s, ",")
	}
	var out []Link
	for _, n := range names {
		i := slices.IndexFunc(Links, func(l Link) bool { return l.Name == strings.TrimSpace(n) })
		if i < 0 {
			return nil, fmt.Errorf("link %q: want one of %s", n, strings.Join(linkNames(), ", "))
		}
		out = append(out, Links[i])
	}
	return out, nil
}

func linkNames() []string {
	var n []string
	for _, l := range Links {
		n = append(n, l.Name)
	}
	return n
}

// DefaultPlan returns the links of a default run of these images (the
// union, in Links order) and the links each image is measured on there:
// its Recipe.DefaultLinks, or DefaultLinks.
func DefaultPlan(images []string) ([]Link, map[string][]string, error) {
	per := map[string][]string{}
	var union []string
	for _, nm := range images {
		r, ok := recipeByName(nm)
		if !ok {
			return nil, nil, fmt.Errorf("image %q: want one of %s", nm, strings.Join(RecipeNames(), ", "))
		}
		names := r.DefaultLinks
		if names == nil {
			names = DefaultLinks
		}
		per[nm] = names
		for _, n := range names {
			if !slices.Contains(union, n) {
				union = append(union, n)
			}
		}
	}
	var links []Link
	for _, l := range Links {
		if slices.Contains(union, l.Name) {
			links = append(links, l)
		}
	}
	if len(links) != len(union) {
		return nil, nil, fmt.Errorf("default links %v: not all are in Links", union)
	}
	return links, per, nil
}

// measured reports whether image was measured on link.
func (c ConfigSummary) measured(image, link string) bool { return onLink(c.ImageLinks, image, link) }

// measures reports whether image is measured on link.
func (c *Config) measures(image, link string) bool { return onLink(c.ImageLinks, image, link) }

// onLink reports whether imageLinks (Config.ImageLinks) has image measured
// on link.
func onLink(imageLinks map[string][]string, image, link string) bool {
	names, ok := imageLinks[image]
	return !ok || slices.Contains(names, link)
}

// planned reports whether the matrix has image in mode on a node in state
// st with containerd v (links aside: see measures). Profile is never run.
func (c *Config) planned(image string, mode Mode, st NodeState, v testenv.ContainerdVersion) bool {
	switch {
	case mode == Profile:
		return false
	case mode == NoBackground && st != Fresh:
		return false
	case st == SharedBase && c.SharedBaseImages != nil && !slices.Contains(c.SharedBaseImages, image):
		return false
	case (mode == NoBackground || st == SharedBase) && c.DetailContainerds != nil && !slices.Contains(c.DetailContainerds, v):
		return false
	}
	return true
}

// ParseContainerds parses a comma-separated list of "1.6" and "2".
func ParseContainerds(s string) ([]testenv.ContainerdVersion, error) {
	var out []testenv.ContainerdVersion
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "1.6":
			out = append(out, testenv.Containerd16)
		case "2":
			out = append(out, testenv.Containerd2)
		default:
			return nil, fmt.Errorf("containerd %q: want 1.6 or 2", f)
		}
	}
	return out, nil
}

// Config says what to measure and where.
type Config struct {
	// Images are recipe names (see Recipes), in report order.
	Images []string
	// Modes to measure; Profile gets a row saying what it waits on.
	Modes []Mode
	// States are the node states to measure each image in (default:
	// Fresh only).
	States []NodeState
	// Containerds are the containerd versions to run.
	Containerds []testenv.ContainerdVersion
	// Links are the link profiles.
	Links []Link
	// ImageLinks, if set, names the links each image is measured on (a
	// subset of Links); an image it does not name is measured on every
	// one. DefaultPlan sets it for a default run.
	ImageLinks map[string][]string
	// SharedBaseImages, if set, are the only images measured on a
	// SharedBase node (a default run: the python images, which the
	// shared-base target is about).
	SharedBaseImages []string
	// DetailContainerds, if set, are the only containerd versions that
	// measure mode NoBackground and the SharedBase state (a default run:
	// 1.6; both are sluiced's behaviour, not containerd's, and the other
	// version measures full and lazy on fresh nodes).
	DetailContainerds []testenv.ContainerdVersion
	// Runs is the number of cold runs of each image, mode, containerd
	// and link; the report gives their median.
	Runs int
	// Binaries are sluice, sluiced and throttleproxy (see Build).
	Binaries Binaries
	// WorkDir holds every node's state and the registry's storage; it
	// must exist and is left empty.
	WorkDir string
	// CacheDir holds the images built, keyed by their inputs, between
	// runs (such as /var/cache/sluice-bench).
	CacheDir string
	// RepoRoot is the repository, for scripts/lib.sh.
	RepoRoot string
	// DropCaches drops the page cache (sync; echo 3 >
	// /proc/sys/vm/drop_caches) before each run. The smoke test leaves
	// it off: it runs beside other tests.
	DropCaches bool
	// ReadyTimeout bounds one run from pull to ready line (default 5 min).
	ReadyTimeout time.Duration
	// BackgroundTimeout bounds the wait for sluiced's background fetch
	// to finish after ready (default 10 min); past it the total is
	// reported unknown.
	BackgroundTimeout time.Duration
	// AgentFields are top-level sluiced config lines put before
	// AgentConfig's, such as `stream_min_size = "0"`; the report shows
	// them. A benchmark run sets none: it measures the default config.
	AgentFields string
}

func (c *Config) check() error {
	switch {
	case len(c.Images) == 0, len(c.Modes) == 0, len(c.Containerds) == 0, len(c.Links) == 0:
		return errors.New("config: images, modes, containerds and links may not be empty")
	case c.Runs < 1:
		return fmt.Errorf("config: runs = %d, want at least 1", c.Runs)
	case c.WorkDir == "", c.CacheDir == "", c.RepoRoot == "":
		return errors.New("config: work dir, cache dir and repository root are required")
	case c.Binaries.Sluice == "" || c.Binaries.Sluiced == "" || c.Binaries.ThrottleProxy == "":
		return errors.New("config: binaries not set (see Build)")
	}
	for _, name := range c.Images {
		if _, ok := recipeByName(name); !ok {
			return fmt.Errorf("config: image %q: want one of %s", name, strings.Join(RecipeNames(), ", "))
		}
	}
	for im, names := range c.ImageLinks {
		for _, n := range names {
			if !slices.ContainsFunc(c.Links, func(l Link) bool { return l.Name == n }) {
				return fmt.Errorf("config: image %s on link %q, which is not in Links", im, n)
			}
		}
	}
	if len(c.States) == 0 {
		c.States = []NodeState{Fresh}
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 5 * time.Minute
	}
	if c.BackgroundTimeout == 0 {
		c.BackgroundTimeout = 10 * time.Minute
	}
	return nil
}
