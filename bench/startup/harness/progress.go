package harness

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// progress logs how many runs are done and, from their pace so far, how
// long the rest should take (runs of large images take longer, so the
// estimate is rough until every image has run).
type progress struct {
	total, n int
	start    time.Time
}

func newProgress(cfg Config) *progress {
	p := &progress{start: time.Now()}
	for _, link := range cfg.Links {
		for _, im := range cfg.Images {
			if !cfg.measures(im, link.Name) {
				continue
			}
			for _, m := range cfg.Modes {
				for _, st := range cfg.States {
					for _, v := range cfg.Containerds {
						if cfg.planned(im, m, st, v) {
							p.total += cfg.Runs
						}
					}
				}
			}
		}
	}
	return p
}

func (p *progress) done(ctx context.Context) {
	p.n++
	elapsed := time.Since(p.start)
	left := time.Duration(float64(elapsed) / float64(p.n) * float64(p.total-p.n))
	zerolog.Ctx(ctx).Info().Int("done", p.n).Int("of", p.total).Str("elapsed", elapsed.Round(time.Second).String()).Str("left_estimate", left.Round(time.Second).String()).Msg("progress")
}
