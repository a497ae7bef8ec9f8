package nodeconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInstallUninstallContainerd(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(debianConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	o := Options{Socket: socket}

	// A dry run shows the change and writes nothing.
	c, err := InstallContainerd(path, o, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Diff, `+      snapshotter = "sluice"`) {
		t.Errorf("dry-run diff:\n%s", c.Diff)
	}
	if readFile(t, path) != debianConfig {
		t.Fatal("the dry run changed the file")
	}
	if _, err := os.Stat(path + BackupSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the dry run wrote a backup: %v", err)
	}

	c, err = InstallContainerd(path, o, false)
	if err != nil {
		t.Fatal(err)
	}
	patched := readFile(t, path)
	if c.Backup != path+BackupSuffix || readFile(t, c.Backup) != debianConfig {
		t.Fatalf("backup %q is not the original", c.Backup)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want the original's 0600", st.Mode().Perm())
	}

	// Twice changes nothing, and keeps the backup of the original.
	c, err = InstallContainerd(path, o, false)
	if err != nil || c.Diff != "" || readFile(t, path) != patched || readFile(t, path+BackupSuffix) != debianConfig {
		t.Fatalf("second install: %v, diff:\n%s", err, c.Diff)
	}

	// Uninstall restores byte for byte and removes the backup.
	if _, err := UninstallContainerd(path, false, true); err != nil || readFile(t, path) != patched {
		t.Fatalf("uninstall dry run: %v, or the file changed", err)
	}
	if _, err := UninstallContainerd(path, false, false); err != nil {
		t.Fatal(err)
	}
	if readFile(t, path) != debianConfig {
		t.Fatalf("not restored:\n%s", readFile(t, path))
	}
	if _, err := os.Stat(path + BackupSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("backup left: %v", err)
	}
	// Twice too.
	if c, err := UninstallContainerd(path, false, false); err != nil || c.Diff != "" || readFile(t, path) != debianConfig {
		t.Fatalf("second uninstall: %v %q", err, c.Diff)
	}
}

// TestUninstallChanged: a file edited after sluice set it up is not
// overwritten by its backup, unless forced.
func TestUninstallChanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(debianConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := InstallContainerd(path, Options{Socket: socket}, false); err != nil {
		t.Fatal(err)
	}
	edited := readFile(t, path) + "\n[plugins.\"io.containerd.gc.v1.scheduler\"]\n  pause_threshold = 0.05\n"
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := UninstallContainerd(path, false, false); !errors.Is(err, ErrChanged) {
		t.Fatalf("got %v, want ErrChanged", err)
	}
	if readFile(t, path) != edited {
		t.Fatal("the refused uninstall changed the file")
	}
	// Installing again keeps the backup of the original (the file still
	// names sluice's plugin).
	if _, err := InstallContainerd(path, Options{Socket: socket}, false); err != nil {
		t.Fatal(err)
	}
	if readFile(t, path+BackupSuffix) != debianConfig {
		t.Fatal("backup replaced")
	}
	if _, err := UninstallContainerd(path, true, false); err != nil {
		t.Fatal(err)
	}
	if readFile(t, path) != debianConfig {
		t.Fatal("forced uninstall did not restore the backup")
	}
}

// TestUninstallNoBackup: sluice's plugin without a backup is not guessed
// away.
func TestUninstallNoBackup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	p, err := PatchContainerd([]byte(debianConfig), Options{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, p.Config, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := UninstallContainerd(path, false, false); err == nil || !strings.Contains(err.Error(), "no backup") {
		t.Fatalf("got %v, want an error saying there is no backup", err)
	}
}

// TestInstallThroughSymlink: a config that is a symlink is edited where
// it points, and stays a symlink.
func TestInstallThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.toml")
	link := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(target, []byte(debianConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := InstallContainerd(link, Options{Socket: socket}, false); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v", err)
	}
	if !strings.Contains(readFile(t, target), "[proxy_plugins.sluice]") {
		t.Fatal("target not edited")
	}
}

func TestInstallRefusesBrokenConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	broken := "version = 2\nroot = = \"/x\"\n"
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := InstallContainerd(path, Options{Socket: socket}, false)
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("got %v, want an error giving the line", err)
	}
	if readFile(t, path) != broken {
		t.Fatal("file changed")
	}
}

func TestTrustSigned(t *testing.T) {
	src := `# sluiced
root = "/var/lib/sluice"

[trust]
# Which artifacts may decide an image's root filesystem.
policy = "any"
# Public key files.
keys = []
`
	out, changes, err := TrustSigned([]byte(src), []string{"/etc/sluice/keys/ci.pub"})
	if err != nil {
		t.Fatal(err)
	}
	want := `# sluiced
root = "/var/lib/sluice"

[trust]
# Which artifacts may decide an image's root filesystem.
policy = "signed"
# Public key files.
keys = ["/etc/sluice/keys/ci.pub"]
`
	if string(out) != want || len(changes) != 2 {
		t.Fatalf("got %q:\n%s", changes, out)
	}
	// Another key is added after it; the same key again changes nothing.
	out2, _, err := TrustSigned(out, []string{"/etc/sluice/keys/ci.pub", "/k2.pub"})
	if err != nil || !strings.Contains(string(out2), `keys = ["/etc/sluice/keys/ci.pub", "/k2.pub"]`) {
		t.Fatalf("%v:\n%s", err, out2)
	}
	if out3, changes, _ := TrustSigned(out2, []string{"/k2.pub"}); string(out3) != string(out2) || len(changes) != 0 {
		t.Fatalf("the same key again changed %q", changes)
	}
	if _, _, err := TrustSigned(out, []string{"rel.pub"}); err == nil {
		t.Fatal("a relative key path was taken")
	}
}
