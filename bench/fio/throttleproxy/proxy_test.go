package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestPacerSharesTheLink(t *testing.T) {
	start := time.Unix(1000, 0)
	now := start
	p := newPacer(1e6) // 1 MB/s: 1 µs a byte
	p.now = func() time.Time { return now }
	// An idle link gives no credit.
	a := p.reserve(1000, time.Time{})
	if want := now.Add(time.Millisecond); !a.Equal(want) {
		t.Fatalf("first 1000 bytes done at %v, want %v", a, want)
	}
	// Bytes booked while it is busy queue behind, whoever sends them.
	b := p.reserve(500, time.Time{})
	if want := start.Add(1500 * time.Microsecond); !b.Equal(want) {
		t.Fatalf("next 500 bytes done at %v, want %v", b, want)
	}
	// A transfer that wakes up late, within the lag, catches up.
	now = start.Add(2500 * time.Microsecond)
	if got, want := p.reserve(2000, b), start.Add(3500*time.Microsecond); !got.Equal(want) {
		t.Fatalf("2000 bytes booked late done at %v, want %v", got, want)
	}
	// A new transfer on a link idle for less than the lag gets no credit
	// for the idle time: its bytes cannot arrive sooner than the rate says.
	now = start.Add(4500 * time.Microsecond)
	if got, want := p.reserve(1000, time.Time{}), now.Add(time.Millisecond); !got.Equal(want) {
		t.Fatalf("a new transfer after 1 ms idle done at %v, want %v", got, want)
	}
	// Nor does a transfer late by more than the lag.
	prev := now.Add(time.Millisecond)
	now = prev.Add(3 * time.Millisecond)
	if got, want := p.reserve(1000, prev), now.Add(time.Millisecond); !got.Equal(want) {
		t.Fatalf("a transfer 3 ms late done at %v, want %v", got, want)
	}
	// After an idle spell longer than the lag, the link starts afresh.
	now = start.Add(time.Hour)
	if got, want := p.reserve(3000, time.Time{}), now.Add(3*time.Millisecond); !got.Equal(want) {
		t.Fatalf("after idling, 3000 bytes done at %v, want %v", got, want)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"100MB": 100e6, "100MiB": 100 << 20, "64KiB": 64 << 10, "1.5GB": 1.5e9,
		"4096": 4096, "0": 0, "100MB/s": 100e6, "2kb": 2000,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1MB", "MB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

// TestProxyCountsBlobBodies proxies a fake registry and checks what is
// counted, that the Host header is kept, and that the delay applies.
func TestProxyCountsBlobBodies(t *testing.T) {
	blob := strings.Repeat("x", 10000)
	dgst := "sha256:" + strings.Repeat("ab", 32)
	var hosts []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts = append(hosts, r.Host)
		switch r.URL.Path {
		case "/v2/":
			io.WriteString(w, "{}")
		case "/v2/bench/img/blobs/" + dgst:
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(blob))
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	p := newProxy(u, 20*time.Millisecond, newPacer(0))
	front := httptest.NewServer(p)
	defer front.Close()

	get := func(path, rng string) (int, string, time.Duration) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, front.URL+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), time.Since(start)
	}
	if code, _, d := get("/v2/", ""); code != 200 || d < 20*time.Millisecond {
		t.Fatalf("GET /v2/: %d after %s, want 200 after the 20ms delay", code, d)
	}
	if code, body, _ := get("/v2/bench/img/blobs/"+dgst, "bytes=100-4195"); code != 206 || len(body) != 4096 {
		t.Fatalf("range GET: %d, %d bytes", code, len(body))
	}
	if code, _, _ := get("/v2/bench/img/blobs/"+dgst, ""); code != 200 {
		t.Fatalf("blob GET: %d", code)
	}
	if code, _, _ := get("/v2/bench/img/blobs/sha256:"+strings.Repeat("cd", 32), ""); code != 404 {
		t.Fatalf("missing blob: %d", code)
	}
	if hosts[0] != strings.TrimPrefix(front.URL, "http://") {
		t.Errorf("upstream saw Host %q, want the proxy's %q", hosts[0], front.URL)
	}

	code, body, _ := get("/_stats", "")
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); code != 200 || err != nil {
		t.Fatalf("/_stats: %d %v: %s", code, err, body)
	}
	if s.BlobRequests != 2 || s.BlobBytes != 4096+10000 || s.Blobs[dgst].Bytes != 14096 || s.Requests != 4 {
		t.Fatalf("stats %+v: want 2 blob requests, 14096 blob bytes, 4 requests", s)
	}
}

func TestPacedBodyRate(t *testing.T) {
	// 200 KB at 10 MB/s: about 20 ms. Only a lower bound is checked (sleeps
	// never end early); how close the link gets to its rate is what the
	// benchmark reports, not a unit test.
	body := &pacedBody{rc: io.NopCloser(strings.NewReader(strings.Repeat("y", 200e3))), pace: newPacer(10e6), count: func(int64) {}}
	start := time.Now()
	n, err := io.Copy(io.Discard, body)
	if err != nil || n != 200e3 {
		t.Fatalf("copied %d, %v", n, err)
	}
	if d := time.Since(start); d < 19*time.Millisecond {
		t.Fatalf("200 KB at 10 MB/s took %s, want >= 20ms", d)
	}
}
