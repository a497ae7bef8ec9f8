package imageconv

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

type phaseTimer struct {
	t     testing.TB
	name  string
	start time.Time
}

func (p *phaseTimer) Phase(name string, total int64) {
	if p.name != "" {
		p.t.Logf("%-24s %v", p.name, time.Since(p.start).Round(time.Millisecond))
	}
	p.name, p.start = name, time.Now()
}
func (p *phaseTimer) Advance(int64) {}

// BenchmarkConvertSynthetic converts a ~200 MB image of mixed text-like
// and random files in two layers, logging each phase's time.
func BenchmarkConvertSynthetic(b *testing.B) {
	host := testutil.Registry(b)
	r := rand.New(rand.NewPCG(7, 7))
	words := []string{"lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "\n"}
	mk := func(dir string, n int) []entry {
		es := []entry{{name: dir + "/", typ: tar.TypeDir}}
		for i := range n {
			size := 500 + r.IntN(60_000)
			buf := make([]byte, 0, size)
			if i%4 == 0 {
				for len(buf) < size {
					buf = append(buf, byte(r.Uint32()))
				}
			} else {
				for len(buf) < size {
					buf = append(buf, words[r.IntN(len(words))]...)
					buf = append(buf, ' ')
				}
			}
			es = append(es, entry{name: fmt.Sprintf("%s/f%05d", dir, i), body: string(buf)})
		}
		return es
	}
	t := &testing.T{}
	ref := pushImage(t, host, "synthetic:v1", layerOf(t, mk("usr", 5000)), layerOf(t, mk("opt", 1500)))
	for b.Loop() {
		p := &phaseTimer{t: b}
		start := time.Now()
		if _, err := Convert(context.Background(), ref, WithPlainHTTP(), WithProgress(p), WithWorkDir(b.TempDir())); err != nil {
			b.Fatal(err)
		}
		p.Phase("", 0)
		b.Logf("total %v", time.Since(start).Round(time.Millisecond))
	}
}
