package promtext

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	in := `# HELP sluice_reads_total Reads.
# TYPE sluice_reads_total counter
sluice_reads_total{image="a b"} 12
sluice_up 1

garbage
sluice_ratio 2.5e-3
`
	m, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Samples{`sluice_reads_total{image="a b"}`: 12, "sluice_up": 1, "sluice_ratio": 0.0025}
	if len(m) != len(want) {
		t.Errorf("got %v, want %v", m, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
}
