package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sluice-project/sluice/test/testutil"
)

// bundleDir is where the DaemonSet's image holds the release bundle
// (scripts/bundle.sh).
const bundleDir = "/opt/sluice"

// TestDaemonSet: scripts/daemonset.yaml decodes, as strictly as the API
// server's field validation, into
// Kubernetes' apps/v1 DaemonSet, and holds together: its init container
// copies the bundle to the host path it then runs install-node.sh from in
// the host's namespaces, the readiness probe's sluiced ready flags exist,
// every mount has its volume, and no host mount can pin the host's mounts.
func TestDaemonSet(t *testing.T) {
	b := binaries(t)
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "scripts", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// As the API server's strict field validation decodes: field names
	// case-sensitive, none unknown or duplicated.
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatalf("scripts/daemonset.yaml: %v", err)
	}
	var ds appsv1.DaemonSet
	strict, err := kjson.UnmarshalStrict(js, &ds, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil || len(strict) > 0 {
		t.Fatalf("scripts/daemonset.yaml is not an apps/v1 DaemonSet: %v %v", err, strict)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Fatalf("apiVersion %q kind %q", ds.APIVersion, ds.Kind)
	}
	spec := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("the selector's %s=%s does not select the pods", k, v)
		}
	}
	if !spec.HostPID {
		t.Error("no hostPID: nsenter --target 1 would not reach the host's init")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("a service account token would be mounted into a pod that needs no API access")
	}

	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want 1", len(spec.InitContainers))
	}
	install := spec.InitContainers[0]
	if sc := install.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("the install container is not privileged: it cannot enter the host's namespaces")
	}
	script := strings.Join(install.Command, " ")
	// The bundle goes to the host below the volume mounted at /host/X,
	// and install-node.sh runs there, as the host sees it: X/...
	hostDir := ""
	for _, m := range install.VolumeMounts {
		if rest, ok := strings.CutPrefix(m.MountPath, "/host"); ok {
			hostDir = rest
			if v := volume(spec, m.Name); v == nil || v.HostPath == nil || v.HostPath.Path != rest {
				t.Errorf("%s is not the host's %s", m.MountPath, rest)
			}
		}
	}
	for _, want := range []string{
		"cp -a " + bundleDir + " /host" + hostDir + "/installer.new",
		"mv /host" + hostDir + "/installer.new /host" + hostDir + "/installer",
		"nsenter --target 1 --mount --uts --ipc --net --pid --",
		hostDir + "/installer/install-node.sh",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("the install container does not run %q:\n%s", want, script)
		}
	}

	// Each mount has its volume; host mounts of /run and of sluiced's
	// state (where image mounts live) follow the host's unmounts.
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		for _, m := range c.VolumeMounts {
			v := volume(spec, m.Name)
			if v == nil {
				t.Errorf("%s mounts %s, which is not a volume", c.Name, m.Name)
				continue
			}
			if v.HostPath == nil {
				continue
			}
			p := v.HostPath.Path
			if (p == "/run" || p == "/var/lib/sluice") && (m.MountPropagation == nil || *m.MountPropagation == corev1.MountPropagationNone) {
				t.Errorf("%s mounts the host's %s without propagation: it would keep the host's mounts below it alive", c.Name, p)
			}
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
				t.Errorf("%s mounts the host's %s bidirectionally: nothing in the pod mounts, and the pod's own mounts would reach the host", c.Name, p)
			}
		}
	}

	// The readiness probe is sluiced ready from the bundle, with flags
	// that sluiced takes.
	if len(spec.Containers) != 1 || spec.Containers[0].ReadinessProbe == nil || spec.Containers[0].ReadinessProbe.Exec == nil {
		t.Fatal("no container with a readiness probe")
	}
	probe := spec.Containers[0].ReadinessProbe.Exec.Command
	if probe[0] != bundleDir+"/bin/sluiced" || probe[1] != "ready" {
		t.Fatalf("the readiness probe runs %q, not %s/bin/sluiced ready", probe, bundleDir)
	}
	mustRun(t, nil, b.sluiced, append(probe[1:], "--help")...)
}

func volume(spec corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// TestBundle: the release bundle scripts/bundle.sh lays out (as `make
// bundle` and the DaemonSet's image hold it) runs install-node.sh with
// everything found beside it.
func TestBundle(t *testing.T) {
	b := binaries(t)
	testutil.Require(t, testutil.Tool("diff", "cmp", "install"))
	dir := filepath.Join(t.TempDir(), "sluice-node")
	mustRun(t, nil, filepath.Join(repoRoot(), "scripts", "bundle.sh"), dir, b.dir)
	for _, f := range []string{"install-node.sh", "bin/sluice", "bin/sluiced", "config.sample.toml", "node/sluiced.service"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("bundle: %v", err)
		}
	}
	prefix := t.TempDir()
	writeFile(t, filepath.Join(prefix, "etc", "containerd", "config.toml"), readFile(t, filepath.Join("testdata", "containerd", "1.6-debian.toml")), 0o644)
	r := mustRun(t, nil, filepath.Join(dir, "install-node.sh"), "--dry-run", "--prefix", prefix)
	for _, want := range []string{"would create: " + prefix + "/usr/local/bin/sluiced", "would create: " + prefix + "/etc/systemd/system/sluiced.service", "would change:"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the bundle's install-node.sh --dry-run does not say %q:\n%s", want, r.stdout)
		}
	}
}
