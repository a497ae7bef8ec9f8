package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// built are sluice and sluiced, built once for the package (with -race
// under go test -race), in one directory: what install-node.sh's --bin-dir
// takes.
type built struct {
	dir, sluice, sluiced string
}

var (
	builtOnce sync.Once
	builtBins *built
	builtErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBins != nil {
		os.RemoveAll(builtBins.dir)
	}
	os.Exit(code)
}

// binaries builds sluice and sluiced on first use.
func binaries(t *testing.T) *built {
	t.Helper()
	builtOnce.Do(func() {
		start := time.Now()
		builtBins, builtErr = build()
		if builtErr == nil {
			fmt.Fprintf(os.Stderr, "install tests: sluice and sluiced built in %v\n", time.Since(start).Round(time.Millisecond))
		}
	})
	if builtErr != nil {
		t.Fatalf("building sluice and sluiced: %v", builtErr)
	}
	return builtBins
}

func build() (*built, error) {
	dir, err := os.MkdirTemp("", "sluice-install-bin-")
	if err != nil {
		return nil, err
	}
	b := &built{dir: dir, sluice: filepath.Join(dir, "sluice"), sluiced: filepath.Join(dir, "sluiced")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for out, pkg := range map[string]string{b.sluice: "./cmd/sluice", b.sluiced: "./cmd/sluiced"} {
		args := []string{"build", "-o", out}
		if raceBuild {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, goTool(), append(args, pkg)...)
		cmd.Dir = repoRoot()
		if o, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, o)
		}
	}
	return b, nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// repoRoot is the module's root, found from the working directory (go
// test runs in the package's directory).
func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// installScript is scripts/install-node.sh of this tree.
func installScript() string { return filepath.Join(repoRoot(), "scripts", "install-node.sh") }

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit status %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// runCmd runs a command to completion (3 minutes at most) with env added
// to the environment; only a failure to run it at all is an error.
func runCmd(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return r
}

// mustRun is runCmd that fails the test on a non-zero exit.
func mustRun(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	r := runCmd(t, env, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: %s", name, strings.Join(args, " "), r)
	}
	return r
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
