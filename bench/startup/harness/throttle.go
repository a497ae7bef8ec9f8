package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-project/sluice/test/testenv"
)

// throttle is a running bench/fio/throttleproxy in front of the registry:
// the link every node pulls through.
type throttle struct {
	addr string // host:port
	link Link
	proc *testenv.Proc
	log  string
}

// proxyStats is what throttleproxy's /_stats answers (the fields used).
type proxyStats struct {
	Requests     int64                       `json:"requests"`
	BodyBytes    int64                       `json:"body_bytes"`
	BlobRequests int64                       `json:"blob_requests"`
	BlobBytes    int64                       `json:"blob_bytes"`
	Blobs        map[string]proxyBlobCounter `json:"blobs"`
}

type proxyBlobCounter struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// startThrottle starts the proxy for link in front of the registry at
// upstream (host:port), its files in dir.
func startThrottle(ctx context.Context, bin, dir, upstream string, link Link) (*throttle, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addrFile := filepath.Join(dir, "addr")
	t := &throttle{link: link, log: filepath.Join(dir, "throttleproxy.log")}
	logFile, err := os.Create(t.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--addr-file", addrFile,
		"--upstream", "http://"+upstream, "--rtt", link.RTT.String(), "--bandwidth", link.bandwidthFlag())
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if t.proc, err = testenv.StartProc(cmd); err != nil {
		return nil, fmt.Errorf("throttleproxy: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			t.addr = strings.TrimSpace(string(b))
			if _, err := t.stats(ctx); err == nil {
				return t, nil
			}
		}
		select {
		case <-t.proc.Done():
			return nil, fmt.Errorf("throttleproxy exited during startup: %s", testenv.LogTail(t.log, 20))
		case <-ctx.Done():
			t.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.stop()
			return nil, fmt.Errorf("throttleproxy not ready within 20 s: %s", testenv.LogTail(t.log, 20))
		}
	}
}

func (t *throttle) stop() { t.proc.Stop(10 * time.Second) }

// stats reads the proxy's counters (served at once, not throttled).
func (t *throttle) stats(ctx context.Context) (proxyStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+t.addr+"/_stats", nil)
	if err != nil {
		return proxyStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return proxyStats{}, fmt.Errorf("throttleproxy /_stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return proxyStats{}, fmt.Errorf("throttleproxy /_stats: %s", resp.Status)
	}
	var s proxyStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return proxyStats{}, fmt.Errorf("throttleproxy /_stats: %w", err)
	}
	return s, nil
}

// traffic is what went through the link between two stats snapshots.
type traffic struct {
	Requests int64 // every request
	Bytes    int64 // every response body byte
	// LayerBytes are the body bytes of the image's layer blobs: all of
	// them for a full pull, none for a streamed one.
	LayerBytes int64
}

func (s proxyStats) since(before proxyStats, layers []string) traffic {
	tr := traffic{Requests: s.Requests - before.Requests, Bytes: s.BodyBytes - before.BodyBytes}
	for _, d := range layers {
		tr.LayerBytes += s.Blobs[d].Bytes - before.Blobs[d].Bytes
	}
	return tr
}
