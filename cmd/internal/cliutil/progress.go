package cliutil

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Progress shows long steps: a bar on a terminal, a log line every few
// seconds otherwise. It satisfies imageconv.Progress.
type Progress struct {
	mu    sync.Mutex
	tty   bool
	out   io.Writer
	log   zerolog.Logger
	bar   *progressbar.ProgressBar
	phase string
	total int64
	done  int64
	last  time.Time
}

// NewProgress writes to stderr; bars only if stderr is a terminal.
func NewProgress(log zerolog.Logger) *Progress {
	return &Progress{tty: term.IsTerminal(int(os.Stderr.Fd())), out: os.Stderr, log: log}
}

// Phase starts a new step.
func (p *Progress) Phase(name string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked()
	p.phase, p.total, p.done, p.last = name, total, 0, time.Now()
	if p.tty {
		max := total
		if max <= 0 {
			max = -1
		}
		p.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(p.out),
			progressbar.OptionSetDescription(name),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		return
	}
	p.log.Info().Str("step", name).Int64("bytes", total).Msg("started")
}

// Advance records n more bytes done.
func (p *Progress) Advance(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if time.Since(p.last) >= 5*time.Second {
		p.last = time.Now()
		ev := p.log.Info().Str("step", p.phase).Int64("done", p.done)
		if p.total > 0 {
			ev = ev.Float64("percent", float64(int(1000*float64(p.done)/float64(p.total)))/10)
		}
		ev.Msg("progress")
	}
}

// Finish ends the current step's display.
func (p *Progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked()
}

func (p *Progress) finishLocked() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}
