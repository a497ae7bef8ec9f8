// Command fleet predicts what N nodes cold-starting one image cost the
// registry (package model), from one node's measured trace, for three
// setups: direct, a pull-through cache, and P2P. It prints a table and a
// chart of origin egress.
//
//	go run ./bench/fleet -trace trace.json -nodes 1000
//
// The trace (model.Trace as JSON) comes from a node measured alone:
// test/fleet.TestPredictsEightNodes records one (FLEET_TRACE=FILE keeps
// it), and
// checks the model against eight real nodes behind one cache.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sluice-project/sluice/bench/fleet/model"
)

func main() {
	var (
		tracePath = flag.String("trace", "", "node trace (JSON, model.Trace); required")
		nodes     = flag.Int("nodes", 1000, "nodes cold-starting the image")
		spread    = flag.Float64("spread", 30, "seconds over which the nodes start, evenly")
		originBW  = flag.Float64("origin-bandwidth", 1e9, "bytes per second the origin serves in all")
		cacheBW   = flag.Float64("cache-bandwidth", 5e9, "bytes per second the pull-through cache serves in all")
		nodeBW    = flag.Float64("node-bandwidth", 1.25e9, "bytes per second of each node's link")
		hit       = flag.Float64("p2p-hit", 0.99, "share of repeat requests a peer answers")
		fillWait  = flag.Float64("fill-wait", 2, "seconds a node goes around a cache that streamed it a whole blob (blockcache's mirrorFillWait)")
	)
	flag.Parse()
	if *tracePath == "" {
		fmt.Fprintln(os.Stderr, "fleet: -trace is required")
		os.Exit(2)
	}
	tr, err := load(*tracePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
	p := model.Params{Nodes: *nodes, Spread: *spread, OriginBandwidth: *originBW, CacheBandwidth: *cacheBW, NodeBandwidth: *nodeBW, P2PHit: *hit, FillWait: *fillWait}
	var results []model.Result
	for _, s := range []model.Setup{model.Direct, model.PullThrough, model.P2P} {
		r, err := model.Simulate(tr, s, p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fleet:", err)
			os.Exit(1)
		}
		results = append(results, r)
	}
	fmt.Printf("%d nodes starting over %g s; origin %s/s, cache %s/s, nodes %s/s; P2P hit %.0f%%\n\n",
		p.Nodes, p.Spread, size(int64(p.OriginBandwidth)), size(int64(p.CacheBandwidth)), size(int64(p.NodeBandwidth)), 100*p.P2PHit)
	table(os.Stdout, results)
	fmt.Println()
	chart(os.Stdout, results, 50)
}

func load(path string) (model.Trace, error) {
	var tr model.Trace
	b, err := os.ReadFile(path)
	if err != nil {
		return tr, err
	}
	if err := json.Unmarshal(b, &tr); err != nil {
		return tr, fmt.Errorf("trace %s: %w", path, err)
	}
	return tr, nil
}

// table prints one row per setup.
func table(w io.Writer, rs []model.Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "setup\torigin egress\torigin requests\tpeak requests/s\tall ready (s)\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t\n", r.Setup, size(r.OriginBytes), r.OriginRequests, r.PeakRate, r.AllReady)
	}
	tw.Flush()
}

// chart draws origin egress as bars, scaled to the largest.
func chart(w io.Writer, rs []model.Result, width int) {
	var most int64
	for _, r := range rs {
		most = max(most, r.OriginBytes)
	}
	fmt.Fprintln(w, "origin egress")
	for _, r := range rs {
		n := 0
		if most > 0 {
			n = int(float64(width) * float64(r.OriginBytes) / float64(most))
		}
		fmt.Fprintf(w, "%-20s %s %s\n", r.Setup, strings.Repeat("#", max(n, 1)), size(r.OriginBytes))
	}
}

func size(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
