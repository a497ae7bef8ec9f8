package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries are the commands a benchmark runs.
type Binaries struct {
	Sluice        string // cmd/sluice: converts the images
	Sluiced       string // cmd/sluiced: the node agent of the lazy modes
	ThrottleProxy string // bench/fio/throttleproxy: the link
}

// Build compiles the binaries into dir (with the race detector if race):
// the code of this checkout is what gets measured.
func Build(ctx context.Context, dir string, race bool) (Binaries, error) {
	b := Binaries{
		Sluice:        filepath.Join(dir, "sluice"),
		Sluiced:       filepath.Join(dir, "sluiced"),
		ThrottleProxy: filepath.Join(dir, "throttleproxy"),
	}
	for out, pkg := range map[string]string{
		b.Sluice:        "github.com/sluice-project/sluice/cmd/sluice",
		b.Sluiced:       "github.com/sluice-project/sluice/cmd/sluiced",
		b.ThrottleProxy: "github.com/sluice-project/sluice/bench/fio/throttleproxy",
	} {
		args := []string{"build", "-o", out}
		if race {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, goTool(), append(args, pkg)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
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

// RepoRoot finds the repository root (the directory holding go.mod) at or
// above dir.
func RepoRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod at or above %s", dir)
		}
	}
}
