package nodeconfig

import (
	"errors"
	"strings"
	"testing"
)

const socket = "/run/sluice/snapshotter.sock"

// debianConfig is Debian 12's /etc/containerd/config.toml (package
// containerd 1.6.20).
const debianConfig = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`

func TestPatchVersion2(t *testing.T) {
	p, err := PatchContainerd([]byte(debianConfig), Options{Socket: socket, Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	want := `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "sluice"
      disable_snapshot_annotations = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"

[proxy_plugins.sluice]
  type = "snapshot"
  address = "/run/sluice/snapshotter.sock"
`
	if string(p.Config) != want {
		t.Errorf("got:\n%s\nwant:\n%s", p.Config, want)
	}
	if p.Version != 2 || len(p.Changes) != 4 {
		t.Errorf("version %d, changes %q", p.Version, p.Changes)
	}
}

func TestPatchVersion3(t *testing.T) {
	src := `version = 3
# registries in hosts.toml files
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d'
[plugins.'io.containerd.transfer.v1.local']
  max_concurrent_downloads = 3
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/arm64/v8'
    snapshotter = 'overlayfs'
[proxy_plugins.stargz]
  type = 'snapshot'
  address = '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock'
`
	p, err := PatchContainerd([]byte(src), Options{Socket: socket, Platform: "linux/arm64/v8"})
	if err != nil {
		t.Fatal(err)
	}
	want := `version = 3
# registries in hosts.toml files
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'sluice'
[plugins.'io.containerd.transfer.v1.local']
  max_concurrent_downloads = 3
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/arm64/v8'
    snapshotter = 'overlayfs'

  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/arm64/v8'
    snapshotter = 'sluice'
[proxy_plugins.stargz]
  type = 'snapshot'
  address = '/run/containerd-stargz-grpc/containerd-stargz-grpc.sock'

[proxy_plugins.sluice]
  type = 'snapshot'
  address = '/run/sluice/snapshotter.sock'

  [proxy_plugins.sluice.exports]
    enable_remote_snapshot_annotations = 'true'
`
	if string(p.Config) != want {
		t.Errorf("got:\n%s\nwant:\n%s", p.Config, want)
	}
	if len(p.Notes) != 0 {
		t.Errorf("notes: %q", p.Notes)
	}
}

// TestPatchVersion3Defaults: a config without unpack_config gets
// containerd's default entry written out beside sluice's, and says so.
func TestPatchVersion3Defaults(t *testing.T) {
	p, err := PatchContainerd([]byte("version = 3\n"), Options{Socket: socket, Platform: "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\nplatform = \"linux/amd64\"\nsnapshotter = \"overlayfs\"\ndiffer = \"walking\"\n",
		"[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\nplatform = \"linux/amd64\"\nsnapshotter = \"sluice\"\n",
	} {
		if !strings.Contains(string(p.Config), want) {
			t.Errorf("no\n%s\nin:\n%s", want, p.Config)
		}
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "built-in list") {
		t.Errorf("notes: %q", p.Notes)
	}
}

// TestPatchLocalPull: containerd 2.x's CRI pulls with its own client when
// its config has registry mirrors; the labels then need annotations on.
func TestPatchLocalPull(t *testing.T) {
	src := `version = 3
[plugins."io.containerd.cri.v1.images".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example.com"]
`
	p, err := PatchContainerd([]byte(src), Options{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(p.Config), "disable_snapshot_annotations = false") {
		t.Errorf("annotations not turned on:\n%s", p.Config)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "registry.mirrors") {
		t.Errorf("notes do not say why: %q", p.Notes)
	}
}

func TestPatchTwiceChangesNothing(t *testing.T) {
	for _, src := range []string{debianConfig, "version = 3\n", "version = 4\n[plugins]\n"} {
		p, err := PatchContainerd([]byte(src), Options{Socket: socket})
		if err != nil {
			t.Fatal(err)
		}
		again, err := PatchContainerd(p.Config, Options{Socket: socket})
		if err != nil {
			t.Fatal(err)
		}
		if string(again.Config) != string(p.Config) || len(again.Changes) != 0 {
			t.Errorf("second patch changed %q:\n%s", again.Changes, again.Config)
		}
	}
}

func TestPatchRefused(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      error
	}{
		{"no version line", "disabled_plugins = [\"cri\"]\n", ErrVersion1},
		{"version 1", "version = 1\n[plugins.cri]\n  sandbox_image = \"pause\"\n", ErrVersion1},
		{"version 5", "version = 5\n", ErrVersion},
		{"version as a string", "version = \"2\"\n", ErrVersion},
		{"sluice names another kind of plugin", "version = 2\n[proxy_plugins.sluice]\n  type = \"content\"\n", ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PatchContainerd([]byte(tc.src), Options{Socket: socket})
			if !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := PatchContainerd([]byte(debianConfig), Options{Socket: "relative.sock"}); err == nil {
		t.Error("a relative socket was taken")
	}
}

func TestPatchNotesDisabledCRI(t *testing.T) {
	p, err := PatchContainerd([]byte("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"), Options{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "CRI plugin is off") {
		t.Errorf("notes: %q", p.Notes)
	}
}
