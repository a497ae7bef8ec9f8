package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/debregistry"
)

// TestTamperedArtifact: an image whose sluice artifact has a corrupt index
// blob is pulled the ordinary way under policy fallback (a correct root
// filesystem, the fallback counted, the reason logged) and refused under
// policy require with an error that names the image and the bad index.
func TestTamperedArtifact(t *testing.T) {
	e := getEnv(t)
	ti := e.images[repoTampered]
	t.Run("fallback", func(t *testing.T) {
		n := newNode(t, e, nodeOpts{})
		before := n.labelled("sluice_fallbacks_total")
		n.pull(ti.ref)
		if after := n.labelled("sluice_fallbacks_total"); after <= before {
			t.Errorf("sluice_fallbacks_total went from %v to %v over the pull of an image with a corrupt artifact", before, after)
		}
		if v := n.metric("sluice_image_mounts"); v != 0 {
			t.Errorf("sluice_image_mounts = %v: the corrupt artifact was mounted", v)
		}
		pod, podCfg := n.runPod("tampered")
		n.checkRootfs(pod, podCfg, "list", ti)
		// The log says which image and why, on one line.
		found := false
		for _, line := range strings.Split(n.agent.log(), "\n") {
			if strings.Contains(line, repoTampered) && strings.Contains(line, "index") {
				found = true
				t.Logf("sluiced: %s", line)
				break
			}
		}
		if !found {
			t.Errorf("sluiced's log has no line naming %s and its bad index:\n%s", ti.ref, n.agent.logTail(30))
		}
	})
	t.Run("require", func(t *testing.T) {
		n := newNode(t, e, nodeOpts{policy: "require", noSandbox: true})
		_, err := n.containerd.Crictl(context.Background(), "pull", ti.ref)
		if err == nil {
			t.Fatal("crictl pull of an image with a corrupt artifact succeeded under policy require")
		}
		msg := err.Error()
		if !strings.Contains(msg, repoTampered) || !strings.Contains(msg, "index") {
			t.Errorf("the error does not name the image %s and its bad index:\n%s", ti.ref, msg)
		}
		t.Logf("crictl pull: %s", msg)
		if v := n.labelled("sluice_refusals_total"); v < 1 {
			t.Errorf("sluice_refusals_total = %v after a refused pull", v)
		}
	})
}

// TestRegistryDown: pulling from a registry that is down fails, through
// CRI and through sluice pull, with an error naming the registry; once it
// is back, the same pull streams.
func TestRegistryDown(t *testing.T) {
	e := getEnv(t)
	storage := filepath.Join(t.TempDir(), "registry")
	reg := startRegistry(t, storage)
	ti := e.pushConverted(t, e.images[repoA], reg.Addr+"/down/a:v1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := newNode(t, e, nodeOpts{registries: []string{reg.Addr}, noSandbox: true})
	reg.Stop()

	_, err := n.containerd.Crictl(ctx, "pull", ti.ref)
	if err == nil {
		t.Fatal("crictl pull from a registry that is down succeeded")
	}
	if !strings.Contains(err.Error(), reg.Addr) {
		t.Errorf("crictl pull: the error does not name the registry %s:\n%v", reg.Addr, err)
	}
	out, err := n.sluicePull("default", ti.ref)
	if err == nil {
		t.Fatalf("sluice pull from a registry that is down succeeded:\n%s", out)
	}
	if !strings.Contains(out, reg.Addr) {
		t.Errorf("sluice pull: the error does not name the registry %s:\n%s", reg.Addr, out)
	}
	t.Logf("sluice pull: %s", strings.TrimSpace(out))

	// Back where it was: the same pull now streams.
	reg = startRegistry(t, storage, debregistry.WithAddr(reg.Addr))
	if out, err := n.sluicePull("default", ti.ref); err != nil {
		t.Fatalf("sluice pull once the registry is back: %v\n%s", err, out)
	}
	if v := n.metric("sluice_image_mounts"); v != 1 {
		t.Errorf("sluice_image_mounts = %v once the registry is back, want 1 (streamed)", v)
	}
}

// TestBrokenConfig: sluiced started with a bad config exits non-zero,
// with a message that names the field, and leaves nothing running.
func TestBrokenConfig(t *testing.T) {
	e := getEnv(t)
	cases := []struct {
		name, config, want string
	}{
		{"bad policy", `policy = "sometimes"`, "policy"},
		{"unknown field", "polcy = \"require\"\n", "polcy"},
		{"bad cache size", "[cache]\nsize = \"lots\"\n", "cache.size"},
		{"relative root", `root = "var/lib/sluice"`, "root"},
		{"not loopback metrics", `metrics_address = "0.0.0.0:9808"`, "metrics_address"},
		{"wrong type", `plain_http = "127.0.0.1:5000"`, "plain_http"},
		{"syntax", "root = /var/lib/sluice\n", "line 3"}, // after address and nbd_socket
		{"trust key that does not parse", "[trust]\npolicy = \"signed\"\nkeys = [\"/dev/null\"]\n", "trust.keys: public key /dev/null"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "config.toml")
			// Paths of its own, so a sluiced that wrongly starts touches
			// nothing else.
			body := c.config + "\n"
			if !strings.Contains(c.config, "root") {
				body = "root = \"" + filepath.Join(dir, "root") + "\"\n" + body
			}
			if !strings.Contains(c.config, "[cache]") {
				body += "[cache]\n"
			}
			body += "dir = \"" + filepath.Join(dir, "cache") + "\"\n"
			body = "address = \"" + filepath.Join(dir, "sn.sock") + "\"\nnbd_socket = \"" + filepath.Join(dir, "nbd.sock") + "\"\n" + body
			if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, e.sluiced, "--config", cfg).CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() == 0 {
				t.Fatalf("sluiced with %s: %v (want a non-zero exit)\n%s", c.name, err, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("sluiced with %s: message does not name %q:\n%s", c.name, c.want, out)
			}
			if _, err := os.Stat(filepath.Join(dir, "sn.sock")); err == nil {
				t.Errorf("sluiced with %s created its socket", c.name)
			}
			t.Logf("%s: exit %d: %s", c.name, ee.ExitCode(), strings.TrimSpace(string(out)))
		})
	}
}
