package node

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
)

// cri drives the node's containerd through its CRI plugin with crictl, as
// kubelet would.
type cri struct {
	t   *testing.T
	dir string // pod and container configs, crictl's (empty) config
}

func newCRI(t *testing.T, dir string) *cri {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "crictl.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return &cri{t: t, dir: dir}
}

// crictl runs crictl against the node's containerd; failing fails the
// test.
func (c *cri) crictl(args ...string) string {
	c.t.Helper()
	ep := "unix://" + containerdSock
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, vmBin("crictl"), append([]string{"--config", filepath.Join(c.dir, "crictl.yaml"),
		"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "2m"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("crictl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return strings.TrimSpace(stdout.String())
}

func (c *cri) writeJSON(file string, v any) string {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	p := filepath.Join(c.dir, file)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// pod is a running pod sandbox.
type pod struct {
	id, config, logs string
}

// runPod starts a host-network pod (the guest has no CNI) whose
// containers log below dir.
func (c *cri) runPod(name string) pod {
	c.t.Helper()
	logs := filepath.Join(c.dir, "logs-"+name)
	config := c.writeJSON("pod-"+name+".json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "sluice-vm", "uid": name + "-" + filepath.Base(c.dir), "attempt": 0},
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
		"log_directory": logs,
	})
	return pod{id: c.crictl("runp", config), config: config, logs: logs}
}

// start creates and starts a container in p and returns its ID; its log
// is p.logs/NAME.log.
func (c *cri) start(p pod, name, image string, command ...string) string {
	c.t.Helper()
	config := c.writeJSON("ctr-"+name+".json", map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	id := c.crictl("create", p.id, config, p.config)
	c.crictl("start", id)
	return id
}

// output waits until the container exits and returns its output; it fails
// the test unless it exited 0.
func (c *cri) output(id string) string {
	c.t.Helper()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		state := c.crictl("inspect", "-o", "go-template", "--template", "{{.status.state}} {{.status.exitCode}}", id)
		if strings.HasPrefix(state, "CONTAINER_EXITED") {
			out := c.crictl("logs", id) + "\n"
			if state != "CONTAINER_EXITED 0" {
				c.t.Fatalf("container %s: %s, output:\n%s", id, state, out)
			}
			return strings.TrimLeft(out, "\n")
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("container %s still %s after 3 min", id, state)
		}
	}
}

// logUntil waits until the container's log file (CRI format: one line per
// line of output, after a timestamp and the stream) holds want.
func logUntil(t *testing.T, p pod, name, want string) {
	t.Helper()
	log := filepath.Join(p.logs, name+".log")
	for deadline := time.Now().Add(3 * time.Minute); !strings.Contains(readFile(log), want); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("container %s has not printed %q in 3 minutes:\n%s", name, want, readFile(log))
		}
	}
}

// untilTERM is a shell command that sleeps until SIGTERM or SIGINT. A
// container's PID 1 gets no signal it has no handler for, and systemd's
// shutdown waits 90 s before it sends SIGKILL.
const untilTERM = "trap 'exit 0' TERM INT; sleep 2147483647 & wait"

var sandboxImageRE = regexp.MustCompile(`(?m)^\s*sandbox_image = "([^"]+)"`)

// importSandbox makes the CRI plugin's sandbox (pause) image, as the
// node's containerd config names it, available offline: busybox whose
// entrypoint sleeps until SIGTERM (as the pause image's does, so that a
// shutdown need not wait for SIGKILL), imported into the k8s.io namespace and unpacked into
// the sluice snapshotter (as an image without an artifact: the ordinary
// way).
func importSandbox(t *testing.T, dir string) {
	t.Helper()
	dump := run(t, time.Minute, "containerd", "--config", containerdConfig, "config", "dump")
	m := sandboxImageRE.FindStringSubmatch(dump)
	if m == nil {
		t.Fatalf("no sandbox_image in containerd config dump:\n%s", dump)
	}
	tag, err := name.NewTag(m[1])
	if err != nil {
		t.Fatal(err)
	}
	img, err := busyboxImage([]string{"/bin/sh", "-c", untilTERM})
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "sandbox.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	run(t, 3*time.Minute, "ctr", "--address", containerdSock, "-n", "k8s.io", "images", "import", "--snapshotter", "sluice", archive)
	t.Logf("sandbox image %s imported", m[1])
}

// busyboxImage is an image of the run archive's static busybox and its
// applets, with entrypoint.
func busyboxImage(entrypoint []string) (v1.Image, error) {
	bbPath := os.Getenv("SLUICE_VM_BUSYBOX")
	bb, err := os.ReadFile(bbPath)
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(bbPath, "--list").Output()
	if err != nil {
		return nil, err
	}
	meta := func(mode int64) imagebuild.Meta {
		return imagebuild.Meta{Mode: mode, ModTime: time.Unix(1700000000, 0)}
	}
	l := imagebuild.New().Layer()
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp"} {
		l.Dir(d, meta(0o755))
	}
	l.File("bin/busybox", bb, meta(0o755))
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			l.Symlink("bin/"+a, "busybox", meta(0o777))
		}
	}
	gz, err := l.Gzip()
	if err != nil {
		return nil, err
	}
	img, err := imagebuild.Image(gz)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Entrypoint = entrypoint
	return mutate.ConfigFile(img, cf)
}
