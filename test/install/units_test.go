package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/testutil"
)

// unitFile is a systemd unit file: section -> key -> values, in order.
type unitFile map[string]map[string][]string

func parseUnit(text string) unitFile {
	u := unitFile{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, _ := strings.Cut(line, "=")
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func (u unitFile) get(section, key string) string { return strings.Join(u[section][key], " ") }

// verifyUnits runs systemd-analyze verify on unit files and returns what
// it reports (nothing when they are fine: it warns on stderr with exit
// status 0 about unknown keys and bad values).
func verifyUnits(t *testing.T, units ...string) string {
	t.Helper()
	r := runCmd(t, nil, "systemd-analyze", append([]string{"verify"}, units...)...)
	return strings.TrimSpace(r.stderr + r.stdout)
}

// checkUnitFiles checks the unit, drop-in and module files installed below
// prefix: systemd-analyze verifies sluiced.service, and Debian's
// containerd.service with the drop-in, without a complaint; and they say
// what the node needs.
func checkUnitFiles(t *testing.T, prefix string) {
	t.Helper()
	testutil.Require(t, testutil.Tool("systemd-analyze"))
	sys := filepath.Join(prefix, "etc", "systemd", "system")
	unitText := readFile(t, filepath.Join(sys, "sluiced.service"))
	dropinText := readFile(t, filepath.Join(sys, "containerd.service.d", "10-sluice.conf"))

	// Verified as systemd loads them: sluiced.service, and containerd's
	// own unit (from Debian's containerd package) with the drop-in beside
	// it.
	dir := t.TempDir()
	ctrdUnit, err := os.ReadFile("/lib/systemd/system/containerd.service")
	if err != nil {
		t.Fatalf("containerd's unit (Debian's containerd package, scripts/install-deps.sh installs it): %v", err)
	}
	writeFile(t, filepath.Join(dir, "containerd.service"), string(ctrdUnit), 0o644)
	writeFile(t, filepath.Join(dir, "containerd.service.d", "10-sluice.conf"), dropinText, 0o644)
	writeFile(t, filepath.Join(dir, "sluiced.service"), unitText, 0o644)
	if out := verifyUnits(t, filepath.Join(dir, "sluiced.service"), filepath.Join(dir, "containerd.service")); out != "" {
		t.Errorf("systemd-analyze verify:\n%s", out)
	}

	u := parseUnit(unitText)
	for _, c := range []struct{ section, key, want string }{
		{"Unit", "Before", "containerd.service"},
		{"Service", "Type", "exec"},
		{"Service", "Restart", "on-failure"},
		{"Service", "KillMode", "process"},
		{"Service", "KillSignal", "SIGTERM"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		if got := u.get(c.section, c.key); !strings.Contains(" "+got+" ", " "+c.want+" ") {
			t.Errorf("sluiced.service: [%s] %s = %q, want %q", c.section, c.key, got, c.want)
		}
	}
	if post := u.get("Service", "ExecStartPost"); !strings.Contains(post, "/usr/local/bin/sluiced ready --config ") {
		t.Errorf("sluiced.service does not wait for sluiced to answer: ExecStartPost = %q", post)
	}
	// A mount namespace of its own would hide image mounts from containerd.
	for _, k := range []string{"PrivateMounts", "PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices", "MountFlags", "ReadOnlyPaths", "TemporaryFileSystem"} {
		if v := u.get("Service", k); v != "" {
			t.Errorf("sluiced.service sets %s=%s: the service would get a mount namespace of its own", k, v)
		}
	}
	d := parseUnit(dropinText)
	if d.get("Unit", "Wants") != "sluiced.service" || d.get("Unit", "After") != "sluiced.service" {
		t.Errorf("the containerd drop-in does not want and follow sluiced.service:\n%s", dropinText)
	}
	if d.get("Unit", "Requires") != "" || d.get("Unit", "BindsTo") != "" {
		t.Error("the containerd drop-in would restart containerd with sluiced")
	}
	// containerd's config is set up again before each start, and a failure
	// to do so does not keep containerd down.
	pre := d.get("Service", "ExecStartPre")
	if !strings.HasPrefix(pre, "-"+prefix+"/usr/local/bin/sluiced install-config --config "+prefix+"/etc/sluice/config.toml --containerd-config "+prefix+"/etc/containerd/config.toml") {
		t.Errorf("the containerd drop-in's ExecStartPre = %q", pre)
	}
	lines := func(p string) []string {
		var out []string
		for _, l := range strings.Split(readFile(t, filepath.Join(prefix, p)), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		return out
	}
	if got := lines("etc/modules-load.d/sluice.conf"); len(got) != 1 || got[0] != "nbd" {
		t.Errorf("modules-load.d/sluice.conf loads %q, want nbd", got)
	}
	if got := lines("etc/modprobe.d/sluice.conf"); len(got) != 1 || got[0] != "options nbd max_part=0" {
		t.Errorf("modprobe.d/sluice.conf: %q, want options nbd max_part=0", got)
	}
}

// TestVerifyCatchesBadUnits: the unit check is not blind.
func TestVerifyCatchesBadUnits(t *testing.T) {
	testutil.Require(t, testutil.Tool("systemd-analyze"))
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.service")
	writeFile(t, p, "[Unit]\nDescription=bad\n[Service]\nExecStart=/bin/true\nKillMode=bogus\n", 0o644)
	if out := verifyUnits(t, p); !strings.Contains(out, "kill mode") {
		t.Errorf("systemd-analyze verify accepted KillMode=bogus: %q", out)
	}
}

// TestInstallFilesOnly: --dry-run writes nothing and shows every change;
// --no-start writes the files and nothing else, without a containerd
// config writes containerd's default first, and again changes nothing;
// --uninstall --no-start leaves containerd's config as it was.
func TestInstallFilesOnly(t *testing.T) {
	b := binaries(t)
	testutil.Require(t, testutil.Root, testutil.Tool("diff", "cmp", "install"))
	bin := containerdBin(t, containerdtest.V1)
	env := []string{"CONTAINERD=" + bin}
	prefix := t.TempDir()
	script := func(args ...string) result {
		t.Helper()
		return mustRun(t, env, installScript(), append([]string{"--prefix", prefix, "--bin-dir", b.dir}, args...)...)
	}
	ctrd := filepath.Join(prefix, "etc", "containerd", "config.toml")

	r := script("--dry-run")
	if files := listFiles(t, prefix); len(files) > 0 {
		t.Fatalf("--dry-run wrote %q", files)
	}
	for _, want := range []string{
		"would create: " + prefix + "/usr/local/bin/sluiced",
		"would create: " + prefix + "/etc/sluice/config.toml",
		"+Before=containerd.service",
		"would write containerd's default config",
		"nbd module",
		"would start: " + prefix + "/usr/local/bin/sluiced --config " + prefix + "/etc/sluice/config.toml",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("--dry-run does not say %q:\n%s", want, r.stdout)
		}
	}

	r = script("--no-start")
	if !strings.Contains(r.stdout, "wrote containerd's default config") {
		t.Errorf("no containerd config written:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, "nbd module") || strings.Contains(r.stdout, "started ") {
		t.Errorf("--no-start loaded a module or started a daemon:\n%s", r.stdout)
	}
	checkUnitFiles(t, prefix)
	if got, want := readFile(t, filepath.Join(prefix, "etc/sluice/config.toml")), readFile(t, filepath.Join(repoRoot(), "cmd/sluiced/config.sample.toml")); got != want {
		t.Error("sluiced's config is not the sample")
	}
	def := readFile(t, ctrd+".sluice-backup")
	if !strings.Contains(readFile(t, ctrd), "[proxy_plugins.sluice]") {
		t.Errorf("containerd's config not set up:\n%s", readFile(t, ctrd))
	}

	// A node image that writes containerd's config at each boot: the
	// drop-in's ExecStartPre sets sluice up again before containerd starts.
	patched := readFile(t, ctrd)
	writeFile(t, ctrd, def, 0o644)
	pre := parseUnit(readFile(t, filepath.Join(prefix, "etc/systemd/system/containerd.service.d/10-sluice.conf"))).get("Service", "ExecStartPre")
	argv := strings.Fields(strings.TrimPrefix(pre, "-"))
	mustRun(t, nil, argv[0], argv[1:]...)
	if readFile(t, ctrd) != patched {
		t.Errorf("ExecStartPre (%s) did not set containerd's config up again:\n%s", pre, readFile(t, ctrd))
	}
	if r := mustRun(t, nil, argv[0], argv[1:]...); !strings.Contains(r.stdout, "nothing to change") {
		t.Errorf("ExecStartPre on a config set up: %s", r)
	}

	before := listFiles(t, prefix)
	r = script("--no-start")
	if strings.Contains(r.stdout, "installed:") || !strings.Contains(r.stdout, "nothing to change") {
		t.Errorf("the second run changed something:\n%s", r.stdout)
	}
	if d := diffKeys(before, listFiles(t, prefix)); len(d) > 0 {
		t.Errorf("the second run changed files:\n%s", strings.Join(d, "\n"))
	}

	script("--uninstall", "--no-start")
	if readFile(t, ctrd) != def {
		t.Error("--uninstall did not restore containerd's config")
	}
	left := listFiles(t, prefix)
	for p := range left {
		if !strings.HasPrefix(p, "etc/sluice/") && p != "etc/containerd/config.toml" {
			t.Errorf("%s left after --uninstall", p)
		}
	}
}

// listFiles returns every file below dir (relative path -> size and mode).
func listFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = info.Mode().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
