package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds sluiced once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sluiced-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "sluiced")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// runBinary runs sluiced with args and returns its exit code and output.
func runBinary(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &exit):
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatal(err)
	return 0, "", ""
}

// TestBinaryBrokenConfig: the agent started with a broken config exits
// non-zero with a message naming the field.
func TestBinaryBrokenConfig(t *testing.T) {
	for body, field := range map[string]string{
		`policy = "sometimes"`:           "policy:",
		"[cache]\nsize = \"lots\"":       "cache.size:",
		`metrics_address = "0.0.0.0:80"`: "metrics_address:",
		`bogus = 1`:                      "unknown field bogus",
		`root = `:                        "line 1",
	} {
		code, _, stderr := runBinary(t, "--config", writeConfig(t, body))
		if code == 0 || !strings.Contains(stderr, field) || !strings.HasPrefix(stderr, "sluiced: ") {
			t.Errorf("config %q: exit %d, stderr %q; want non-zero naming %q", body, code, stderr, field)
		}
	}
	code, _, stderr := runBinary(t, "--config", filepath.Join(t.TempDir(), "missing.toml"))
	if code == 0 || !strings.Contains(stderr, "missing.toml") {
		t.Errorf("missing config: exit %d, %q", code, stderr)
	}
	code, _, stderr = runBinary(t, "--config", writeConfig(t, ""), "--log-level", "chatty")
	if code == 0 || !strings.Contains(stderr, "--log-level") {
		t.Errorf("bad --log-level: exit %d, %q", code, stderr)
	}
}

// TestBinaryHelpAndConfig: --help teaches; "config" prints the effective
// configuration, which loads back to the same values.
func TestBinaryHelpAndConfig(t *testing.T) {
	code, out, _ := runBinary(t, "--help")
	for _, want := range []string{"--config", "/etc/sluice/config.toml", "proxy_plugins.sluice", "disable_snapshot_annotations = false", "--log-level"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("--help (exit %d) does not mention %q", code, want)
		}
	}
	code, out, stderr := runBinary(t, "config", "--config", writeConfig(t, "policy = \"require\"\n[cache]\nsize = \"1GiB\"\n"))
	if code != 0 {
		t.Fatalf("config: exit %d: %s", code, stderr)
	}
	c, err := loadConfig(writeConfig(t, out))
	if err != nil {
		t.Fatalf("the printed config does not load: %v\n%s", err, out)
	}
	if c.Policy != "require" || c.Cache.Size != "1GiB" || c.Cache.MemoryCache != "8MiB" || c.Root != "/var/lib/sluice" {
		t.Errorf("printed config %+v", c)
	}
	if code, _, stderr := runBinary(t, "config", "--config", writeConfig(t, `attacher = "x"`)); code == 0 || !strings.Contains(stderr, "attacher:") {
		t.Errorf("config with a bad field: exit %d, %q", code, stderr)
	}
}

// TestBinaryRunsAndStops runs the built agent: /healthz answers, SIGTERM
// stops it cleanly (exit 0) and its sockets go.
func TestBinaryRunsAndStops(t *testing.T) {
	testutil.RequirePortable(t)
	dir := tempDir(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := writeConfig(t, `root = "`+dir+`/root"
address = "`+dir+`/snap.sock"
nbd_socket = "`+dir+`/nbd.sock"
metrics_address = "`+addr+`"
credentials_file = ""
[cache]
dir = "`+dir+`/cache"
size = "64MiB"
`)
	cmd := exec.Command(binary(t), "--config", cfg, "--log-level", "debug")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("/healthz: %d", resp.StatusCode)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("sluiced exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sluiced did not serve /healthz: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sluiced after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("sluiced did not stop on SIGTERM")
	}
	for _, want := range []string{"using portable attacher", "sluiced ready", "sluiced stopped"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
	for _, sock := range []string{"snap.sock", "nbd.sock"} {
		if _, err := os.Stat(filepath.Join(dir, sock)); err == nil {
			t.Errorf("%s left after a clean stop", sock)
		}
	}
}
