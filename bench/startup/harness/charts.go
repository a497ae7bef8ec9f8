package harness

import (
	"fmt"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Charts draws one PNG per link into dir, startup-LINK.png: the median
// time to ready of each image, node state and containerd, one bar per
// measured mode.
// It records their names in the report, which Markdown then shows.
func (r *Report) Charts(dir string) error {
	rows := Rows(r.Samples)
	var modes []Mode
	for _, m := range r.Config.Modes {
		if m != Profile {
			modes = append(modes, m)
		}
	}
	r.ChartFiles = nil
	for _, link := range r.Config.Links {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("Pod start to ready line, %s (median of %d)", link, r.Config.Runs)
		p.Y.Label.Text = "seconds"
		type group struct {
			image, containerd string
			state             NodeState
		}
		var groups []group
		var labels []string
		for _, im := range r.Config.Images {
			if !r.Config.measured(im, link.Name) {
				continue
			}
			for _, st := range r.Config.States {
				for _, v := range r.Config.Containerds {
					if !slices.ContainsFunc(rows, func(r Row) bool {
						return r.Image == im && r.State == st && r.Containerd == v && r.Link == link.Name
					}) {
						continue
					}
					groups = append(groups, group{im, v, st})
					labels = append(labels, im+"\n"+string(st)+"\n"+v)
				}
			}
		}
		w := vg.Points(18)
		for i, mode := range modes {
			vals := make(plotter.Values, 0, len(groups))
			for _, g := range groups {
				j := slices.IndexFunc(rows, func(r Row) bool {
					return r.Image == g.image && r.State == g.state && r.Containerd == g.containerd && r.Link == link.Name && r.Mode == mode
				})
				val := 0.0
				if j >= 0 {
					val = rows[j].Ready.Seconds()
				}
				vals = append(vals, val)
			}
			bars, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return fmt.Errorf("chart of %s: %w", link.Name, err)
			}
			bars.LineStyle.Width = 0
			bars.Color = plotutil.Color(i)
			bars.Offset = w * vg.Length(float64(i)-float64(len(modes)-1)/2)
			p.Add(bars)
			p.Legend.Add(string(mode), bars)
		}
		p.Legend.Top = true
		p.NominalX(labels...)
		file := "startup-" + link.Name + ".png"
		if err := p.Save(vg.Length(2+1.2*float64(len(groups)))*vg.Inch, 4*vg.Inch, filepath.Join(dir, file)); err != nil {
			return fmt.Errorf("chart of %s: %w", link.Name, err)
		}
		r.ChartFiles = append(r.ChartFiles, file)
	}
	return nil
}
