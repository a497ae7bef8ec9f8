package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// Report is what a run measured, with where and how.
type Report struct {
	Started     time.Time     `json:"started"`
	Finished    time.Time     `json:"finished"`
	Machine     Machine       `json:"machine"`
	Config      ConfigSummary `json:"config"`
	AgentConfig string        `json:"agent_config"`
	Images      []ImageInfo   `json:"images"`
	Samples     []Sample      `json:"samples"`
	// ChartFiles are the PNGs Charts drew, next to the markdown.
	ChartFiles []string `json:"charts,omitempty"`
	// Targets are issue 15's targets checked on the medians (Run sets
	// them; Markdown computes them from Samples).
	Targets []Target `json:"targets"`
}

// JSON writes the report as JSON (every sample), for later tools.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// NotYet lists what the harness does not measure yet (issue 15 and 16).
var NotYet = []string{
	"mode `profile`: " + ProfileWaits,
}

// Markdown writes the report: machine, settings, one table per link with
// the medians, every run, and what is not measured yet.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Pod start through CRI: sluice lazy pull vs full pull\n\n")
	p("Measured %s to %s (UTC) by `make bench-startup` (bench/startup) at commit `%s`.\n\n",
		r.Started.Format("2006-01-02 15:04"), r.Finished.Format("15:04"), r.Machine.Commit)

	p("## Machine\n\n")
	m := r.Machine
	p("- %d cores (%s), %.1f GiB memory, kernel %s, %s\n", m.Cores, m.CPU, m.MemoryGiB, m.Kernel, m.Go)
	p("- load average (1, 5, 15 min) before: %s; after: %s. The machine is shared: compare rows of one report, not absolute times.\n", m.LoadBefore, m.LoadAfter)
	keys := make([]string, 0, len(m.Versions))
	for k := range m.Versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p("- %s: `%s`\n", k, m.Versions[k])
	}
	if m.StorageRoot != "" {
		p("- node state in %s\n", m.StorageRoot)
	}

	p("\n## Settings\n\n")
	c := r.Config
	p("- %d cold run(s) of each image, mode, containerd and link; the tables give medians. Modes interleave run by run.\n", c.Runs)
	p("- Each run is a new node: new containerd root (content store, snapshots) and, in mode `lazy`, a new sluiced with an empty chunk cache")
	if c.DropCaches {
		p("; the page cache is dropped after the pod sandbox starts, before the pull.\n")
	} else {
		p("; the page cache is NOT dropped (smoke mode).\n")
	}
	p("- The clock starts at the CRI PullImage call and stops at the timestamp containerd put on the container's ready line (`%s`) in its CRI log. Pull, create and start are the CRI calls' own times; \"start→ready\" is from StartContainer's return to the ready line. Host-network pods (no CNI), sandbox image imported beforehand.\n", ReadyLine)
	p("- Registry: Debian's docker-registry on 127.0.0.1 behind bench/fio/throttleproxy: a round-trip time added once per request, one bandwidth cap shared by all response bodies. Bytes and requests are counted by the proxy: \"before ready\" from the pull to the ready line, \"total\" once sluiced's background fetch has completed the image (for a full pull, the same).\n")
	p("- Modes: `full` is containerd's overlayfs with an ordinary pull; `lazy` is sluiced (proxy snapshotter; portable attach where the kernel has no nbd driver) with this config, every other field at its default (background fetch on):\n\n")
	p("```toml\n%s```\n\n", r.AgentConfig)
	p("  `lazy-nobg` is the same with background fetch off (`background_rate = \"0\"` in `[cache]`), on fresh nodes only: `lazy` against it is what the default config's background fetch costs the start; its total is unknown, since nothing fetches what the container did not read.\n")
	if c.SharedBaseImages != nil || c.DetailContainerds != nil {
		p("- A default run narrows the matrix:")
		if c.SharedBaseImages != nil {
			p(" only %s run on a `shared-base` node (the shared-base target is about the python images);", strings.Join(c.SharedBaseImages, " and "))
		}
		if c.DetailContainerds != nil {
			p(" mode `lazy-nobg` and the `shared-base` state run on %s only (both are sluiced's behaviour; the other containerd measures `full` and `lazy` on fresh nodes);", strings.Join(c.DetailContainerds, ", "))
		}
		p(" `-shared-base-images all -detail-containerd all` runs every combination.\n")
	}
	p("- Node states: %s. `fresh` is a new node; on a `shared-base` node another image with the same base (the image plus another small top layer) ran to its ready line first (and, lazy, its background fetch completed), and the measured image is the image plus its own small top layer (a few hundred bytes).\n", joinStates(c.States))
	if len(c.ImageLinks) > 0 {
		p("- Links: not every image on every link (a default run; `-links all` runs the whole matrix):")
		for _, im := range c.Images {
			if names, ok := c.ImageLinks[im]; ok {
				p(" %s on %s;", im, strings.Join(names, ", "))
			}
		}
		p("\n")
	}
	p("- Read through the device: sluiced's `sluice_read_bytes_total` from the pull to the ready line, the bytes its block reads served (uncompressed: the container's reads, the kernel's readahead, the mount's and probes' reads). \"fetched / read\" is the median over runs of the bytes through the link before ready (compressed chunks, manifests and indexes) over those, so it can fall below 1 on compressible images.\n")
	p("- containerd: %s, configured as test/internal/containerdtest does (CRI; 1.6: config version 2 with `disable_snapshot_annotations = false`; 2.x: version 3, transfer service).\n", strings.Join(c.Containerds, ", "))

	p("\n## Images\n\n")
	p("| image | what | layers | compressed | command |\n|---|---|---|---|---|\n")
	for _, im := range r.Images {
		p("| %s | %s | %d | %s | `%s` |\n", im.Name, im.About, im.Layers, mib(im.LayerBytes), strings.Join(im.Command, " "))
	}

	rows := Rows(r.Samples)
	for i, link := range c.Links {
		p("\n## %s (%s)\n\n", link.Name, link)
		if i < len(r.ChartFiles) {
			p("![median time to ready, %s](%s)\n\n", link.Name, r.ChartFiles[i])
		}
		p("| image | node | containerd | mode | ready | pull | create | start | start→ready | fetched before ready | requests before ready | layer blobs before ready | read through device before ready | fetched / read | total fetched | speedup vs full |\n")
		p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, im := range c.Images {
			for _, st := range c.States {
				for _, v := range c.Containerds {
					for _, mode := range c.Modes {
						if mode == Profile {
							if c.measured(im, link.Name) && slices.ContainsFunc(rows, func(r Row) bool {
								return r.Image == im && r.State == st && r.Containerd == v && r.Link == link.Name
							}) {
								p("| %s | %s | %s | profile | %s | | | | | | | | | | | |\n", im, st, v, ProfileWaits)
							}
							continue
						}
						i := slices.IndexFunc(rows, func(r Row) bool {
							return r.Image == im && r.State == st && r.Containerd == v && r.Link == link.Name && r.Mode == mode
						})
						if i < 0 {
							continue
						}
						p("%s\n", rows[i].markdown())
					}
				}
			}
		}
	}

	p("\n## Targets\n\n")
	p("Issue 15's targets, checked on the medians of mode `lazy` (sluiced's default config) above.\n\n")
	checked := CheckTargets(rows)
	p("| target | image | node | containerd | link | measured | bound | result |\n|---|---|---|---|---|---|---|---|\n")
	for _, name := range TargetNames() {
		found := false
		for _, t := range checked {
			if t.Name != name {
				continue
			}
			found = true
			verdict := "PASS"
			if !t.Pass {
				verdict = "FAIL"
			}
			p("| %s | %s | %s | %s | %s | %s | %g | %s |\n", name, t.Image, t.State, t.Containerd, t.Link, t.Text, t.Limit, verdict)
		}
		if !found {
			p("| %s | | | | | not measured in this run | | |\n", name)
		}
	}

	p("\n## Every run\n\n")
	p("| link | image | node | containerd | mode | run | ready | pull | start→ready | fetched before ready | requests | read through device before ready | total fetched | image complete after ready | sluiced fetched at ready (background part) | error |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.Samples {
		total, complete, agent, read := "unknown", "", "", ""
		if s.Total != nil {
			total = mib(s.Total.Bytes)
		}
		if s.Complete > 0 {
			complete = secs(s.Complete)
		}
		if s.Mode != Full {
			agent = fmt.Sprintf("%s (%s)", mib(s.AgentFetched), mib(s.AgentBackground))
			read = mib(s.AgentRead)
			if s.AgentFallbacks > 0 {
				agent = "none: pulled the ordinary way"
			}
		}
		errText := ""
		if s.Err != "" {
			errText = strings.ReplaceAll(strings.SplitN(s.Err, "\n", 2)[0], "|", "\\|")
			total = ""
		}
		p("| %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", s.Link, s.Image, s.State, s.Containerd, s.Mode, s.Run,
			secs(s.Ready), secs(s.Pull), secs(s.AfterStart), mib(s.BeforeReady.Bytes), s.BeforeReady.Requests, read, total, complete, agent, errText)
	}

	p("\n## Not measured yet\n\n")
	for _, n := range NotYet {
		p("- %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r Row) markdown() string {
	if r.Runs == 0 {
		return fmt.Sprintf("| %s | %s | %s | %s | all %d runs failed (see Every run) | | | | | | | | | | | |", r.Image, r.State, r.Containerd, r.Mode, r.Failed)
	}
	total := "unknown"
	if r.Mode == NoBackground {
		total = "(background fetch off)"
	}
	if r.TotalRuns > 0 {
		total = mib(r.Total.Bytes)
		if r.TotalRuns < r.Runs {
			total += fmt.Sprintf(" (%d of %d runs)", r.TotalRuns, r.Runs)
		}
	}
	speedup := ""
	if r.Speedup > 0 {
		speedup = fmt.Sprintf("%.2fx", r.Speedup)
	}
	ready := secs(r.Ready)
	if r.Failed > 0 {
		ready += fmt.Sprintf(" (%d failed)", r.Failed)
	}
	read, perRead := "", ""
	if r.Mode != Full {
		read = mib(r.Read)
		if r.FetchedPerRead > 0 {
			perRead = fmt.Sprintf("%.2fx", r.FetchedPerRead)
		}
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |",
		r.Image, r.State, r.Containerd, r.Mode, ready, secs(r.Pull), secs(r.Create), secs(r.Start), secs(r.AfterStart),
		mib(r.BeforeReady.Bytes), r.BeforeReady.Requests, mib(r.BeforeReady.LayerBytes), read, perRead, total, speedup)
}

// secs formats d in seconds; a negative d (the ready line stamped before
// StartContainer returned: the JSON keeps it) shows as 0.
func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", max(d, 0).Seconds()) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func joinStates(ss []NodeState) string {
	var out []string
	for _, s := range ss {
		out = append(out, "`"+string(s)+"`")
	}
	return strings.Join(out, ", ")
}
