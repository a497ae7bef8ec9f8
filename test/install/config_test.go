package install

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/containerd/platforms"

	"github.com/sluice-project/sluice/test/internal/containerdtest"
	"github.com/sluice-project/sluice/test/testutil"
)

const sluicedSocket = "/run/sluice/snapshotter.sock"

// containerdBin returns the containerd command of version v, failing the
// test, saying how to install it, if it is missing.
func containerdBin(t *testing.T, v containerdtest.Version) string {
	t.Helper()
	testutil.Require(t, testutil.Check(v.String(), v.Available))
	if v == containerdtest.V2 {
		dir, err := containerdtest.Dir2()
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "containerd")
	}
	p, err := exec.LookPath(containerdtest.Binary)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dump returns containerd's effective config for the file path, as that
// containerd reads it (config dump), decoded.
func dump(t *testing.T, containerd, path string) map[string]any {
	t.Helper()
	r := mustRun(t, nil, containerd, "--config", path, "config", "dump")
	var m map[string]any
	if _, err := toml.Decode(r.stdout, &m); err != nil {
		t.Fatalf("decoding containerd's config dump: %v\n%s", err, r.stdout)
	}
	return m
}

// TestContainerdConfigs: sluiced install-config on real configs, each
// loaded by the containerd it is for: containerd's own defaults, Debian's
// packaged config, and node configs that carry other proxy snapshotters,
// registry mirrors and credentials or hosts.toml directories, and a GPU
// runtime class. After the edit, containerd reads sluice's keys and every
// other key as before; a second run changes nothing; --uninstall restores
// the file byte for byte.
func TestContainerdConfigs(t *testing.T) {
	b := binaries(t)
	for _, tc := range []struct {
		name    string // testdata/containerd/NAME, or containerd's config default
		version containerdtest.Version
	}{
		{"config default", containerdtest.V1},
		{"config default", containerdtest.V2},
		{"1.6-debian.toml", containerdtest.V1},
		{"1.6-node.toml", containerdtest.V1},
		{"1.6-config-path.toml", containerdtest.V1},
		{"2.x-node.toml", containerdtest.V2},
		{"2.x-mirrors.toml", containerdtest.V2},
	} {
		t.Run(tc.version.String()+"/"+tc.name, func(t *testing.T) {
			bin := containerdBin(t, tc.version)
			var src []byte
			if tc.name == "config default" {
				src = []byte(mustRun(t, nil, bin, "config", "default").stdout)
			} else {
				var err error
				if src, err = os.ReadFile(filepath.Join("testdata", "containerd", tc.name)); err != nil {
					t.Fatal(err)
				}
			}
			testConfig(t, b, bin, tc.version, src)
		})
	}
}

func testConfig(t *testing.T, b *built, containerd string, v containerdtest.Version, src []byte) {
	path := filepath.Join(t.TempDir(), "config.toml")
	writeFile(t, path, string(src), 0o640)
	before := dump(t, containerd, path)

	r := mustRun(t, nil, b.sluiced, "install-config", "--containerd-config", path, "--socket", sluicedSocket)
	t.Logf("install-config:\n%s%s", r.stdout, r.stderr)
	patched := readFile(t, path)
	if readFile(t, path+".sluice-backup") != string(src) {
		t.Error("the backup is not the original file")
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("mode of the edited file: %v %v, want 0640", st.Mode().Perm(), err)
	}
	after := dump(t, containerd, path)

	// sluice's keys are in effect.
	mirrors := strings.Contains(string(src), ".mirrors.")
	for _, kv := range setKeys(v, mirrors) {
		if got, ok := get(after, kv.key); !ok || !reflect.DeepEqual(got, kv.value) {
			t.Errorf("containerd reads %s = %#v (set: %v), want %#v", strings.Join(kv.key, "."), got, ok, kv.value)
		}
	}
	if v == containerdtest.V2 {
		if !hasUnpack(after, platforms.DefaultString(), "sluice") {
			t.Errorf("containerd's transfer service has no unpack_config entry for sluice on %s", platforms.DefaultString())
		}
	}

	// Every other key is as it was.
	hadUnpack := hasKey(before, unpackKey)
	for _, m := range []map[string]any{before, after} {
		for _, kv := range setKeys(v, true) {
			del(m, kv.key)
		}
		del(m, []string{"proxy_plugins", "sluice"})
	}
	dropUnpack(t, after, hadUnpack)
	if d := diffKeys(flatten(before), flatten(after)); len(d) > 0 {
		t.Errorf("keys other than sluice's changed:\n%s", strings.Join(d, "\n"))
	}

	// A second run changes nothing.
	r = mustRun(t, nil, b.sluiced, "install-config", "--containerd-config", path, "--socket", sluicedSocket)
	if !strings.Contains(r.stdout, "nothing to change") || readFile(t, path) != patched {
		t.Errorf("the second run changed the file:\n%s", r)
	}

	// Uninstall restores it byte for byte.
	mustRun(t, nil, b.sluiced, "install-config", "--containerd-config", path, "--uninstall")
	if got := readFile(t, path); got != string(src) {
		t.Errorf("--uninstall did not restore the original byte for byte:\n%s", got)
	}
	if _, err := os.Stat(path + ".sluice-backup"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("backup left after --uninstall: %v", err)
	}
}

var unpackKey = []string{"plugins", "io.containerd.transfer.v1.local", "unpack_config"}

type keyValue struct {
	key   []string
	value any
}

// setKeys are the keys install-config sets (bar the unpack_config entry),
// as containerd's dump shows them: 1.6's config version 2, 2.x's current
// version whatever the file's.
func setKeys(v containerdtest.Version, mirrors bool) []keyValue {
	k := func(parts ...string) []string { return parts }
	keys := []keyValue{
		{k("proxy_plugins", "sluice", "type"), "snapshot"},
		{k("proxy_plugins", "sluice", "address"), sluicedSocket},
	}
	if v == containerdtest.V1 {
		return append(keys,
			keyValue{k("plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter"), "sluice"},
			keyValue{k("plugins", "io.containerd.grpc.v1.cri", "containerd", "disable_snapshot_annotations"), false})
	}
	keys = append(keys,
		keyValue{k("proxy_plugins", "sluice", "exports", "enable_remote_snapshot_annotations"), "true"},
		keyValue{k("plugins", "io.containerd.cri.v1.images", "snapshotter"), "sluice"})
	if mirrors {
		keys = append(keys, keyValue{k("plugins", "io.containerd.cri.v1.images", "disable_snapshot_annotations"), false})
	}
	return keys
}

func get(m map[string]any, k []string) (any, bool) {
	var cur any = m
	for _, p := range k {
		t, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = t[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func hasKey(m map[string]any, k []string) bool {
	_, ok := get(m, k)
	return ok
}

func del(m map[string]any, path []string) {
	cur := m
	for _, p := range path[:len(path)-1] {
		next, ok := cur[p].(map[string]any)
		if !ok {
			return
		}
		cur = next
	}
	delete(cur, path[len(path)-1])
}

func unpackEntries(m map[string]any) []map[string]any {
	v, _ := get(m, unpackKey)
	e, _ := v.([]map[string]any)
	return e
}

func hasUnpack(m map[string]any, platform, snapshotter string) bool {
	for _, u := range unpackEntries(m) {
		if u["platform"] == platform && u["snapshotter"] == snapshotter {
			return true
		}
	}
	return false
}

// dropUnpack removes from a dump the unpack_config entries install-config
// adds: sluice's, and containerd's default overlayfs entry when the file
// had none (so containerd used its built-in list).
func dropUnpack(t *testing.T, m map[string]any, had bool) {
	t.Helper()
	entries := unpackEntries(m)
	if entries == nil {
		return
	}
	var kept []map[string]any
	for _, u := range entries {
		switch {
		case u["snapshotter"] == "sluice":
		case !had && u["snapshotter"] == "overlayfs" && u["platform"] == platforms.DefaultString():
		default:
			kept = append(kept, u)
		}
	}
	if len(kept) == 0 && !had {
		del(m, unpackKey)
		return
	}
	parent, _ := get(m, unpackKey[:len(unpackKey)-1])
	parent.(map[string]any)[unpackKey[len(unpackKey)-1]] = kept
}

// flatten lists every leaf of a decoded document as "a.b.c" -> value.
func flatten(m map[string]any) map[string]string {
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(prefix+"."+k, x)
			}
		case []map[string]any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", prefix, i), x)
			}
		default:
			out[strings.TrimPrefix(prefix, ".")] = fmt.Sprintf("%#v", v)
		}
	}
	walk("", m)
	return out
}

// diffKeys lists the keys whose values differ, sorted.
func diffKeys(a, b map[string]string) []string {
	var d []string
	for k, va := range a {
		if vb, ok := b[k]; !ok {
			d = append(d, fmt.Sprintf("removed %s (was %s)", k, va))
		} else if va != vb {
			d = append(d, fmt.Sprintf("changed %s: %s -> %s", k, va, vb))
		}
	}
	for k, vb := range b {
		if _, ok := a[k]; !ok {
			d = append(d, fmt.Sprintf("added %s = %s", k, vb))
		}
	}
	sort.Strings(d)
	return d
}

// TestContainerdConfigRefused: a version 1 config (which containerd 1.6
// still reads) and a config that does not parse are refused with what to
// do, and left as they are.
func TestContainerdConfigRefused(t *testing.T) {
	b := binaries(t)
	bin := containerdBin(t, containerdtest.V1)
	for _, tc := range []struct {
		file       string
		loads      bool     // containerd reads it
		mentioning []string // in the error
	}{
		{"1.x-version1.toml", true, []string{"version 1", "containerd config migrate", "containerd config default"}},
		{"broken.toml", false, []string{"not valid TOML", "line 3"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("testdata", "containerd", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "config.toml")
			writeFile(t, path, string(src), 0o644)
			if r := runCmd(t, nil, bin, "--config", path, "config", "dump"); (r.code == 0) != tc.loads {
				t.Fatalf("containerd 1.6 reading it: %s", r)
			}
			r := runCmd(t, nil, b.sluiced, "install-config", "--containerd-config", path, "--socket", sluicedSocket)
			if r.code == 0 {
				t.Fatalf("install-config took it: %s", r)
			}
			for _, m := range tc.mentioning {
				if !strings.Contains(r.stderr, m) {
					t.Errorf("the error does not mention %q:\n%s", m, r.stderr)
				}
			}
			if readFile(t, path) != string(src) {
				t.Error("the file changed")
			}
			if _, err := os.Stat(path + ".sluice-backup"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a backup was written: %v", err)
			}
		})
	}
}
