package source

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// TestFileKeychain resolves from the node file first, then the docker
// config; a missing file is no credentials, a broken one an error that
// does not quote it.
func TestFileKeychain(t *testing.T) {
	dir := t.TempDir()
	docker := filepath.Join(dir, "docker")
	if err := os.MkdirAll(docker, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", docker)
	t.Setenv("HOME", dir)
	enc := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	if err := os.WriteFile(filepath.Join(docker, "config.json"), []byte(`{"auths": {"both.example": {"auth": "`+enc("docker", "d")+`"}, "docker.example": {"auth": "`+enc("docker", "d")+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "node.json")
	if err := os.WriteFile(node, []byte(`{"auths": {"both.example": {"auth": "`+enc("node", "n")+`"}, "https://index.docker.io/v1/": {"auth": "`+enc("hub", "h")+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := Keychain(node)
	for registry, want := range map[string]string{"both.example": "node", "docker.example": "docker", "index.docker.io": "hub", "other.example": ""} {
		got := resolveUser(t, kc, registry)
		if got != want {
			t.Errorf("%s: user %q, want %q", registry, got, want)
		}
	}
	if got := resolveUser(t, Keychain(filepath.Join(dir, "absent.json")), "both.example"); got != "docker" {
		t.Errorf("with no node file: user %q, want the docker config's", got)
	}
	broken := filepath.Join(dir, "broken.json")
	if err := os.WriteFile(broken, []byte(`{"auths": "s3cret`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckCredentialsFile(broken); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("broken credentials file: %v", err)
	}
}

// resolveUser returns the user name k gives for registry ("" if none).
func resolveUser(t *testing.T, k authn.Keychain, registry string) string {
	t.Helper()
	reg, err := name.NewRegistry(registry)
	if err != nil {
		t.Fatal(err)
	}
	a, err := k.Resolve(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Username
}
