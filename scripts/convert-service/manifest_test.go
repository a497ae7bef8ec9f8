package convertservice

import (
	"bytes"
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// documents splits a multi-document YAML file.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range bytes.Split(b, []byte("\n---\n")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

// decode decodes one document strictly (an unknown or misspelt field is
// an error) into the API type of its kind.
func decode(t *testing.T, doc []byte) any {
	t.Helper()
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatal(err)
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	default:
		t.Fatalf("unexpected %s %s", meta.APIVersion, meta.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: %v", meta.Kind, err)
	}
	return obj
}

// TestManifests: the Deployment, its claim and its Service decode into the
// Kubernetes API types and fit together: the Service selects the pods and
// targets the container's port, the probes ask /healthz there, every mount
// has its volume, the claim is the one mounted, --listen is that port, and
// the dirs the service uses are mounted (its root filesystem is
// read-only).
func TestManifests(t *testing.T) {
	var (
		dep *appsv1.Deployment
		svc *corev1.Service
		pvc *corev1.PersistentVolumeClaim
	)
	for _, doc := range documents(t, "convert-service.yaml") {
		switch o := decode(t, doc).(type) {
		case *appsv1.Deployment:
			dep = o
		case *corev1.Service:
			svc = o
		case *corev1.PersistentVolumeClaim:
			pvc = o
		}
	}
	if dep == nil || svc == nil || pvc == nil {
		t.Fatalf("want a Deployment, a Service and a PersistentVolumeClaim; got %v, %v, %v", dep != nil, svc != nil, pvc != nil)
	}
	if dep.Namespace != svc.Namespace || dep.Namespace != pvc.Namespace || dep.Namespace == "" {
		t.Errorf("namespaces %q, %q, %q", dep.Namespace, svc.Namespace, pvc.Namespace)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Error("the service locks its state dir: want one replica, replaced by Recreate")
	}
	pod := dep.Spec.Template
	for k, v := range dep.Spec.Selector.MatchLabels {
		if pod.Labels[k] != v {
			t.Errorf("the selector's %s=%s is not a pod label", k, v)
		}
	}
	for k, v := range svc.Spec.Selector {
		if pod.Labels[k] != v {
			t.Errorf("the Service selects %s=%s, not a pod label", k, v)
		}
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	args := map[string]string{}
	for _, a := range c.Args[1:] {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	if c.Args[0] != "convert-service" {
		t.Errorf("args %q: want the convert-service command", c.Args)
	}
	if len(c.Ports) != 1 || len(svc.Spec.Ports) != 1 {
		t.Fatalf("%d container ports, %d service ports", len(c.Ports), len(svc.Spec.Ports))
	}
	port := c.Ports[0]
	if args["--listen"] != ":"+itoa(port.ContainerPort) {
		t.Errorf("--listen=%s, container port %d", args["--listen"], port.ContainerPort)
	}
	if tp := svc.Spec.Ports[0].TargetPort; tp.StrVal != port.Name && tp.IntVal != port.ContainerPort {
		t.Errorf("the Service targets %v, the container's port is %s/%d", tp.String(), port.Name, port.ContainerPort)
	}
	for what, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || (p.HTTPGet.Port.StrVal != port.Name && p.HTTPGet.Port.IntVal != port.ContainerPort) {
			t.Errorf("%s probe %+v: want GET /healthz on the container's port", what, p)
		}
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("mount %s has no volume", m.Name)
		}
		mounts[m.MountPath] = m.Name
	}
	if v := volumes[mounts[args["--state-dir"]]]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Errorf("--state-dir %s is not on the claim %s", args["--state-dir"], pvc.Name)
	}
	if v := volumes[mounts[args["--work-dir"]]]; v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil {
		t.Errorf("--work-dir %s is not a bounded emptyDir", args["--work-dir"])
	}
	for _, flag := range []string{"--sign-key", "--credentials-file"} {
		dir := args[flag][:strings.LastIndex(args[flag], "/")]
		if v := volumes[mounts[dir]]; v.Secret == nil {
			t.Errorf("%s %s is not in a mounted secret", flag, args[flag])
		}
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("want a read-only root filesystem: the service writes only its state and work dirs")
	}
}

func itoa(n int32) string {
	b, _ := yaml.Marshal(n)
	return strings.TrimSpace(string(b))
}

// TestNotificationSnippet: the registry snippet is one endpoint posting to
// the service's /events on the Service's port, ignoring pulls and blobs.
func TestNotificationSnippet(t *testing.T) {
	b, err := os.ReadFile("registry-notifications.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Notifications struct {
			Endpoints []struct {
				Name      string `json:"name"`
				URL       string `json:"url"`
				Timeout   string `json:"timeout"`
				Threshold int    `json:"threshold"`
				Backoff   string `json:"backoff"`
				Ignore    struct {
					MediaTypes []string `json:"mediatypes"`
					Actions    []string `json:"actions"`
				} `json:"ignore"`
			} `json:"endpoints"`
		} `json:"notifications"`
	}
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		t.Fatal(err)
	}
	eps := cfg.Notifications.Endpoints
	if len(eps) != 1 || eps[0].URL != "http://sluice-convert.sluice.svc:8080/events" {
		t.Fatalf("endpoints %+v: want the Service's /events", eps)
	}
	if !strings.Contains(strings.Join(eps[0].Ignore.Actions, " "), "pull") {
		t.Error("pull events are sent")
	}
}
