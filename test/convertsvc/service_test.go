package convertsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/imageconv/artifact/signature"
	"github.com/sluice-project/sluice/test/internal/proc"
	"github.com/sluice-project/sluice/test/internal/promtext"
)

// service is a `sluice convert-service` process. Its work dir is sampled
// all along, for the peak.
type service struct {
	bin     string
	args    []string
	addr    string // host:port of its API
	dir     string
	work    string // --work-dir
	state   string // --state-dir
	logPath string
	proc    *proc.Proc

	mu       sync.Mutex
	peakWork int64
	done     chan struct{} // stops the sampler
}

// startService starts a service with its files under dir and the shared
// bounds; extra are more flags.
func (e *env) startService(dir string, extra ...string) (*service, error) {
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	s := &service{
		bin: e.sluice, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir,
		work: filepath.Join(dir, "work"), state: filepath.Join(dir, "state"), logPath: filepath.Join(dir, "service.log"),
		done: make(chan struct{}),
	}
	for _, d := range []string{s.work, s.state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s.args = append([]string{"convert-service", "--plain-http", "--listen", s.addr, "--sign-key", e.key,
		"--work-dir", s.work, "--state-dir", s.state, "--max-parallel", strconv.Itoa(maxParallel),
		"--max-image-size", strconv.Itoa(maxImageSize)}, extra...)
	if err := s.start(); err != nil {
		return nil, err
	}
	go s.sample()
	return s, nil
}

// start runs the service and waits for /healthz.
func (s *service) start() error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = append(os.Environ(), signature.PasswordEnv+"="+keyPassword)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if s.proc, err = proc.Start(cmd); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + s.addr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.proc.Done():
			return fmt.Errorf("convert-service exited during startup (%v):\n%s", cmd.ProcessState, s.logTail(30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("convert-service not healthy on %s within 30 s:\n%s", s.addr, s.logTail(30))
		}
	}
}

// kill sends SIGKILL (by PID) and waits for the process.
func (s *service) kill() {
	_ = s.proc.Cmd.Process.Signal(syscall.SIGKILL)
	<-s.proc.Done()
}

// stop ends the service with SIGTERM and stops the sampler.
func (s *service) stop() {
	s.proc.Stop(30 * time.Second)
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// checkRaces fails the test if the service's log reports a data race.
func (s *service) checkRaces(t *testing.T) {
	t.Helper()
	if strings.Contains(s.log(), "WARNING: DATA RACE") {
		t.Errorf("convert-service reported a data race:\n%s", s.log())
	}
}

func (s *service) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

func (s *service) logTail(n int) string { return proc.LogTail(s.logPath, n) }

// entries returns the JSON log lines whose message is msg.
func (s *service) entries(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(s.log(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// sample records the peak disk use of the work dir until stop.
func (s *service) sample() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		n := diskUsage(s.work)
		s.mu.Lock()
		s.peakWork = max(s.peakWork, n)
		s.mu.Unlock()
	}
}

// peakWorkDir returns the peak disk use of the work dir seen so far.
func (s *service) peakWorkDir() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakWork
}

func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// peakRSS returns the process's peak resident set (VmHWM).
func (s *service) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.proc.Cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/PID/status")
}

// metrics fetches /metrics: "name{labels}" -> value.
func (s *service) metrics() (map[string]float64, error) {
	return scrape("http://" + s.addr + "/metrics")
}

// metric returns one sample of the service's metrics (0 if absent).
func (s *service) metric(t *testing.T, sample string) float64 {
	t.Helper()
	m, err := s.metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m[sample]
}

// conversions is sluice_convert_conversions_total{outcome,reason}.
func conversions(outcome, reason string) string {
	return fmt.Sprintf(`sluice_convert_conversions_total{outcome=%q,reason=%q}`, outcome, reason)
}

func received(endpoint, result string) string {
	return fmt.Sprintf(`sluice_convert_received_total{endpoint=%q,result=%q}`, endpoint, result)
}

// post sends body to the service's path and returns the status and body.
func (s *service) post(path, contentType, body string) (int, string, error) {
	resp, err := http.Post("http://"+s.addr+path, contentType, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// request asks the service to convert image, as a node does.
func (s *service) request(t *testing.T, image string) (int, string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"image": image})
	code, body, err := s.post("/convert", "application/json", string(b))
	if err != nil {
		t.Fatal(err)
	}
	return code, body
}

// idle waits until the service has nothing queued or running.
func (s *service) idle(t *testing.T, d time.Duration) {
	t.Helper()
	err := waitFor(d, func() bool {
		m, err := s.metrics()
		return err == nil && m["sluice_convert_queue_depth"] == 0 && m["sluice_convert_running"] == 0
	})
	if err != nil {
		t.Fatalf("the service is still busy after %v:\n%s", d, s.logTail(30))
	}
}

// scrape fetches Prometheus metrics: "name{labels}" -> value.
func scrape(url string) (map[string]float64, error) {
	return promtext.Get(context.Background(), url)
}

var _ = bytes.Contains
