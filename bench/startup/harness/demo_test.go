package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAppLayer checks the demo image's app layer: the same size gives the
// same bytes, the assets do not compress (so a full pull must download
// them), and the layer holds the app and exactly the asked size of assets.
func TestAppLayer(t *testing.T) {
	const size = 3<<20 + 5
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar.gz"), filepath.Join(dir, "b.tar.gz")
	for _, p := range []string{a, b} {
		if err := writeAppLayer(context.Background(), p, size); err != nil {
			t.Fatal(err)
		}
	}
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Errorf("two layers of the same size differ")
	}
	if len(ab) < size {
		t.Errorf("the layer compressed to %d bytes, below its %d bytes of assets: they compress", len(ab), size)
	}
	gz, err := gzip.NewReader(bytes.NewReader(ab))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var assets int64
	var app string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case h.Name == "app/app.py":
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			app = string(body)
		case strings.HasPrefix(h.Name, "app/assets/") && h.Typeflag == tar.TypeReg:
			assets += h.Size
		}
	}
	if assets != size {
		t.Errorf("assets hold %d bytes, want %d", assets, size)
	}
	if !strings.Contains(app, ReadyLine) || strings.Contains(app, "assets") {
		t.Errorf("app.py should print the ready line and never name its assets:\n%s", app)
	}
}

func TestParseBandwidth(t *testing.T) {
	for in, want := range map[string]int64{"100M": 100e6, "1G": 1e9, "1.5Gbit/s": 15e8, "800k": 800e3, "64000": 64000, "10Mbps": 10e6} {
		got, err := ParseBandwidth(in)
		if err != nil || got != want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1M", "0", "1"} {
		if got, err := ParseBandwidth(in); err == nil {
			t.Errorf("ParseBandwidth(%q) = %d, want an error", in, got)
		}
	}
}

// TestDemoTable checks the table prints both rows and the ratios from the
// samples.
func TestDemoTable(t *testing.T) {
	r := &DemoResult{
		Image: ImageInfo{About: "an app", Layers: 2, LayerBytes: 300 << 20}, Containerd: "containerd1.6", DropCaches: true,
		Link: Link{Name: "100M-20ms", BitsPerSecond: 100e6, RTT: 20 * time.Millisecond},
		Full: Sample{Ready: 30 * time.Second, Pull: 29 * time.Second, BeforeReady: traffic{Requests: 6, Bytes: 300 << 20}, Total: &traffic{Bytes: 300 << 20}},
		Lazy: Sample{Ready: 3 * time.Second, BeforeReady: traffic{Requests: 40, Bytes: 10 << 20}, AgentBackground: 2 << 20},
	}
	var b strings.Builder
	if err := r.Table(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"100 Mbit/s, 20ms RTT", "30.00 s", "(29.00 s)", "300.0 MiB", "3.00 s", "10.0 MiB", "10.0x sooner", "30.0x fewer bytes", "2.0 MiB of it", "unknown"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
