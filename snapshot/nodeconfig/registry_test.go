package nodeconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRegistryConfigPath(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"version 2", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", "/etc/containerd/certs.d"},
		{"version 3", "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/a:/b'\n", "/a:/b"},
		{"none", "version = 3\n", ""},
		// Version 2's key in a version 3 config is not CRI's.
		{"other version's key", "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/x\"\n", ""},
	} {
		got, err := RegistryConfigPath([]byte(tc.src))
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := RegistryConfigPath([]byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = 3\n")); err == nil || !strings.Contains(err.Error(), "config_path") {
		t.Errorf("a number for config_path: %v, want an error naming it", err)
	}
}

// InstallRegistryConfigPath copies containerd's config_path into
// sluiced's config, keeping the rest of it, once.
func TestInstallRegistryConfigPath(t *testing.T) {
	dir := t.TempDir()
	ctrd := filepath.Join(dir, "config.toml")
	sluiced := filepath.Join(dir, "sluiced.toml")
	os.WriteFile(ctrd, []byte("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"), 0o644)
	os.WriteFile(sluiced, []byte("# mine\nroot = \"/var/lib/sluice\"\n"), 0o600)
	c, err := InstallRegistryConfigPath(sluiced, ctrd, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "# mine\nroot = \"/var/lib/sluice\"\n\n[registry]\nconfig_path = \"/etc/containerd/certs.d\"\n"
	if got := readFile(t, sluiced); got != want || len(c.Summary) != 1 {
		t.Fatalf("sluiced config:\n%s\nsummary %q; want:\n%s", got, c.Summary, want)
	}
	if c, err := InstallRegistryConfigPath(sluiced, ctrd, nil, false); err != nil || c.Diff != "" {
		t.Errorf("second run: %v, diff %q; want no change", err, c.Diff)
	}
	os.WriteFile(ctrd, []byte("version = 2\n"), 0o644)
	if c, err := InstallRegistryConfigPath(sluiced, ctrd, nil, false); err != nil || c.Diff != "" {
		t.Errorf("containerd without config_path: %v, diff %q; want no change", err, c.Diff)
	}
}
