package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testenv"
)

// Machine describes where a report was measured.
type Machine struct {
	CPU         string            `json:"cpu"`
	Cores       int               `json:"cores"`
	MemoryGiB   float64           `json:"memory_gib"`
	Kernel      string            `json:"kernel"`
	Go          string            `json:"go"`
	Commit      string            `json:"commit"`
	Versions    map[string]string `json:"versions"` // tool -> version line
	LoadBefore  string            `json:"load_before"`
	LoadAfter   string            `json:"load_after"`
	StorageRoot string            `json:"work_dir_filesystem"`
}

func describeMachine(ctx context.Context, cfg Config) (Machine, error) {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}, LoadBefore: loadAverage()}
	m.CPU = cpuModel()
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		m.MemoryGiB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}
	var un unix.Utsname
	if err := unix.Uname(&un); err == nil {
		m.Kernel = unix.ByteSliceToString(un.Release[:])
	}
	m.Commit = commit(ctx, cfg.RepoRoot)
	version := func(key, bin string, args ...string) {
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			m.Versions[key] = "unknown: " + err.Error()
			return
		}
		m.Versions[key] = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	version("containerd 1.6", "containerd", "--version")
	if dir, err := testenv.Containerd2Dir(); err == nil {
		version("containerd 2", filepath.Join(dir, "containerd"), "--version")
	}
	version("runc", "runc", "--version")
	version("docker-registry", testenv.RegistryBinary, "--version")
	version("nbdfuse", "nbdfuse", "--version")
	var fs unix.Statfs_t
	if err := unix.Statfs(cfg.WorkDir, &fs); err == nil {
		m.StorageRoot = fmt.Sprintf("%s (filesystem type 0x%x)", cfg.WorkDir, fs.Type)
	}
	return m, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// commit is the checkout's commit, "+dirty" if it has changes.
func commit(ctx context.Context, repo string) string {
	out, err := exec.CommandContext(ctx, "git", "-C", repo, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", repo, "status", "--porcelain").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "+dirty"
	}
	return c
}
