package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/sluice-project/sluice/imageconv/artifact/signature"
)

// TestConvertServiceManifestArgs: the Deployment in scripts/convert-service
// runs convert-service with flags this command has and values it takes
// (the key and credentials files stand in with test ones).
func TestConvertServiceManifestArgs(t *testing.T) {
	b, err := os.ReadFile("../../scripts/convert-service/convert-service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var dep appsv1.Deployment
	if err := yaml.Unmarshal([]byte(strings.Split(string(b), "\n---\n")[0]), &dep); err != nil {
		t.Fatal(err)
	}
	if dep.Kind != "Deployment" || len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the first document is not the Deployment: %s", dep.Kind)
	}
	args := dep.Spec.Template.Spec.Containers[0].Args
	if len(args) == 0 || args[0] != "convert-service" {
		t.Fatalf("args %q", args)
	}
	dir := t.TempDir()
	priv, _, err := signature.GenerateKey([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(signature.PasswordEnv, "pw")
	files := map[string]string{"--sign-key": "key", "--credentials-file": "config.json"}
	os.WriteFile(filepath.Join(dir, "key"), priv, 0o600)
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths": {}}`), 0o600)

	g := &globals{}
	var fl convertServiceFlags
	cmd := convertServiceCommand(g, &fl)
	var local []string
	for _, a := range args[1:] {
		k, v, _ := strings.Cut(a, "=")
		if f, ok := files[k]; ok {
			v = filepath.Join(dir, f)
		}
		local = append(local, k+"="+v)
	}
	if err := cmd.ParseFlags(local); err != nil {
		t.Fatalf("the manifest's args %q: %v", args, err)
	}
	f := cmd.Flags()
	for _, a := range args[1:] {
		k, _, _ := strings.Cut(a, "=")
		if !f.Changed(strings.TrimPrefix(k, "--")) {
			t.Errorf("%s was not taken as a flag", k)
		}
	}
	if _, err := fl.options(g); err != nil {
		t.Errorf("the manifest's args %q: %v", args, err)
	}
}
