package harness

import (
	"fmt"
	"slices"
)

// Target is one of issue 15's targets, checked on one row of the report
// (or a pair of rows).
type Target struct {
	// Name says the target, as the issue states it.
	Name string `json:"name"`
	// Where is the row it was checked on: image, node state, containerd
	// and link.
	Image      string    `json:"image"`
	State      NodeState `json:"node_state"`
	Containerd string    `json:"containerd"`
	Link       string    `json:"link"`
	// Measured is the value checked, Limit its bound, Text the value as
	// the report writes it (such as "12.30x").
	Measured float64 `json:"measured"`
	Limit    float64 `json:"limit"`
	Text     string  `json:"text"`
	Pass     bool    `json:"pass"`
}

// targetSpec is one target: which lazy rows it checks and how.
type targetSpec struct {
	name string
	// applies picks the lazy rows checked.
	applies func(r Row) bool
	// measure returns the value checked (ok false: the row lacks what it
	// needs, such as the full pull to compare with).
	measure func(r Row, rows []Row) (v float64, ok bool)
	limit   float64
	atMost  bool // pass when v <= limit; else when v >= limit
	format  string
}

// pythonImages are the images of the shared-base target.
var pythonImages = []string{"python3", "numpy"}

// targets are issue 15's targets.
var targets = []targetSpec{
	{
		name:    "the 2 GiB image: at least 10x sooner than a full pull at 1 Gbit/s, 20 ms RTT",
		applies: func(r Row) bool { return r.Image == "data" && r.Link == "1G-20ms" && r.State == Fresh },
		measure: speedup, limit: 10, format: "%.2fx",
	},
	{
		name: "python3 with numpy and scipy: at least 5x sooner at 100 Mbit/s",
		applies: func(r Row) bool {
			return r.Image == "numpy" && r.State == Fresh && slices.Contains([]string{"100M-2ms", "100M-20ms"}, r.Link)
		},
		measure: speedup, limit: 5, format: "%.2fx",
	},
	{
		name:    "busybox: never slower than a full pull, at most 1.1x its time",
		applies: func(r Row) bool { return r.Image == "busybox" },
		measure: func(r Row, _ []Row) (float64, bool) {
			if r.Speedup <= 0 {
				return 0, false
			}
			return 1 / r.Speedup, true
		},
		limit: 1.1, atMost: true, format: "%.2fx the full pull's time",
	},
	{
		name:    "bytes fetched before ready: at most 2x the bytes read through the device",
		applies: func(r Row) bool { return r.State == Fresh },
		measure: func(r Row, _ []Row) (float64, bool) { return r.FetchedPerRead, r.FetchedPerRead > 0 },
		limit:   2, atMost: true, format: "%.2fx",
	},
	{
		name:    "the default config's time to ready: within 5% of the same run with background fetch off",
		applies: func(r Row) bool { return r.State == Fresh },
		measure: func(r Row, rows []Row) (float64, bool) {
			i := slices.IndexFunc(rows, func(f Row) bool {
				return f.Image == r.Image && f.Mode == NoBackground && f.Containerd == r.Containerd && f.Link == r.Link && f.State == r.State && f.Runs > 0
			})
			if i < 0 || rows[i].Ready <= 0 {
				return 0, false
			}
			return float64(r.Ready) / float64(rows[i].Ready), true
		},
		limit: 1.05, atMost: true, format: "%.2fx the time with background fetch off",
	},
	{
		name:    "shared-base node: time to ready at most 0.6x the fresh node's (python images)",
		applies: func(r Row) bool { return slices.Contains(pythonImages, r.Image) && r.State == SharedBase },
		measure: func(r Row, rows []Row) (float64, bool) {
			i := slices.IndexFunc(rows, func(f Row) bool {
				return f.Image == r.Image && f.Mode == r.Mode && f.Containerd == r.Containerd && f.Link == r.Link && f.State == Fresh && f.Runs > 0
			})
			if i < 0 || rows[i].Ready <= 0 {
				return 0, false
			}
			return float64(r.Ready) / float64(rows[i].Ready), true
		},
		limit: 0.6, atMost: true, format: "%.2fx the fresh node's time",
	},
}

func speedup(r Row, _ []Row) (float64, bool) { return r.Speedup, r.Speedup > 0 }

// CheckTargets checks issue 15's targets on the lazy rows (sluice's
// default config) that they apply to; a target no row measured is
// absent.
func CheckTargets(rows []Row) []Target {
	var out []Target
	for _, t := range targets {
		for _, r := range rows {
			if r.Mode != Lazy || r.Runs == 0 || !t.applies(r) {
				continue
			}
			v, ok := t.measure(r, rows)
			if !ok {
				continue
			}
			pass := v >= t.limit
			if t.atMost {
				pass = v <= t.limit
			}
			out = append(out, Target{Name: t.name, Image: r.Image, State: r.State, Containerd: r.Containerd, Link: r.Link,
				Measured: v, Limit: t.limit, Text: fmt.Sprintf(t.format, v), Pass: pass})
		}
	}
	return out
}

// TargetNames are the names of the targets CheckTargets checks, in order.
func TargetNames() []string {
	var n []string
	for _, t := range targets {
		n = append(n, t.name)
	}
	return n
}
