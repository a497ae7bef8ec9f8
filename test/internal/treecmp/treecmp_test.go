package treecmp

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/testutil"
)

// deepDirs are nested 255-byte names, together longer than PATH_MAX.
var deepDirs = func() []string {
	var d []string
	for i := range 18 {
		d = append(d, strings.Repeat(string(rune('a'+i)), 255))
	}
	return d
}()

// Binary security.capability values (VFS_CAP_REVISION_2), NUL bytes
// included.
const (
	capNetBindService = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	capNetRaw         = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
)

// fixture writes a tree with every kind of entry treecmp looks at.
func fixture(t *testing.T, root string) {
	t.Helper()
	write := func(name, content string, mode os.FileMode) {
		p := filepath.Join(root, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write("a", "hello", 0o644)
	must(unix.Setxattr(filepath.Join(root, "a"), "user.k", []byte("v\x00w"), 0))
	// Two hard-link pairs of identical files: only their grouping tells
	// them apart.
	for _, n := range []string{"x", "u"} {
		write(n, "same", 0o600)
	}
	must(os.Link(filepath.Join(root, "x"), filepath.Join(root, "y")))
	must(os.Link(filepath.Join(root, "u"), filepath.Join(root, "v")))
	must(os.Mkdir(filepath.Join(root, "d"), 0o755))
	must(os.Symlink("../a", filepath.Join(root, "d", "s")))
	must(unix.Mkfifo(filepath.Join(root, "p"), 0o640))
	write("\xff\xfe-latin1-\xe9", "bytes", 0o644)
	write("sparse", "", 0o644)
	f, err := os.OpenFile(filepath.Join(root, "sparse"), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt([]byte("end"), 3<<20)
	must(err)
	must(f.Close())
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(root, "a"), 70000, 70001))
		// After the chown, which clears it.
		must(unix.Setxattr(filepath.Join(root, "a"), "security.capability", []byte(capNetBindService), 0))
	}
	dirfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(err)
	for _, d := range deepDirs {
		must(unix.Mkdirat(dirfd, d, 0o755))
		next, err := unix.Openat(dirfd, d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		must(err)
		unix.Close(dirfd)
		dirfd = next
	}
	fd, err := unix.Openat(dirfd, "leaf", unix.O_CREAT|unix.O_WRONLY, 0o644)
	must(err)
	unix.Close(fd)
	unix.Close(dirfd)
	touchAll(t, root)
}

// touchAll gives every entry below root the same mtime, children first.
func touchAll(t *testing.T, root string) {
	t.Helper()
	ts := []unix.Timespec{unixTime(1e9, 123456789), unixTime(1e9, 123456789)}
	var walk func(dirfd int)
	walk = func(dirfd int) {
		names, err := readNames(dirfd)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(dirfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				fd, err := unix.Openat(dirfd, n, unix.O_RDONLY|unix.O_DIRECTORY, 0)
				if err != nil {
					t.Fatal(err)
				}
				walk(fd)
				unix.Close(fd)
			}
			if err := unix.UtimesNanoAt(dirfd, n, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	walk(fd)
}

func setxattr(name, key, value string) func(t *testing.T, root string) {
	return func(t *testing.T, root string) {
		if err := unix.Setxattr(filepath.Join(root, name), key, []byte(value), 0); err != nil {
			t.Fatal(err)
		}
	}
}

func unixTime(sec, nsec int64) (ts unix.Timespec) {
	return unix.NsecToTimespec(sec*1e9 + nsec)
}

// openDeep opens the deepest fixture directory.
func openDeep(t *testing.T, root string) int {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deepDirs {
		next, err := unix.Openat(fd, d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestCompare(t *testing.T) {
	base := filepath.Join(t.TempDir(), "want")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	fixture(t, base)
	deepLeaf := strings.Join(deepDirs, "/") + "/leaf"
	run := func(args ...string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			t.Helper()
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
	}
	cases := []struct {
		name     string
		mutate   func(t *testing.T, root string)
		want     []string // "path field"
		needRoot bool
	}{
		{"identical", func(*testing.T, string) {}, nil, false},
		{"one mode bit", run("chmod", "0645", "a"), []string{"a mode"}, false},
		{"setuid", run("chmod", "u+s", "a"), []string{"a mode"}, false},
		{"xattr value", setxattr("a", "user.k", "v\x00"), []string{"a xattr user.k"}, false},
		{"xattr added", setxattr("d", "user.new", ""), []string{"d xattr user.new"}, false},
		{"mtime one ns", func(t *testing.T, root string) {
			ts := []unix.Timespec{unixTime(1e9, 123456790), unixTime(1e9, 123456790)}
			if err := unix.UtimesNano(filepath.Join(root, "x"), ts); err != nil {
				t.Fatal(err)
			}
		}, []string{"x mtime", "y mtime"}, false},
		{"hard-link grouping", func(t *testing.T, root string) {
			// {x,y} {u,v} becomes {x,v} {u,y}: same nlinks, contents, times.
			run("rm", "y", "v")(t, root)
			run("ln", "x", "v")(t, root)
			run("ln", "u", "y")(t, root)
		}, []string{"u hard-link group", "x hard-link group"}, false},
		{"symlink target", func(t *testing.T, root string) {
			run("ln", "-sfn", "../x", "d/s")(t, root)
		}, []string{"d mtime", "d/s mtime", "d/s symlink target"}, false},
		{"content", func(t *testing.T, root string) {
			var st unix.Stat_t
			p := filepath.Join(root, "sparse") // a write would clear a's capability
			if err := unix.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt([]byte("J"), 0)
			f.Close()
			if err := unix.UtimesNano(p, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
				t.Fatal(err)
			}
		}, []string{"sparse content"}, false},
		{"missing non-UTF-8 name", run("rm", "\xff\xfe-latin1-\xe9"), []string{"\xff\xfe-latin1-\xe9 presence"}, false},
		{"extra fifo", run("mkfifo", "q"), []string{"q presence"}, false},
		{"type", func(t *testing.T, root string) {
			run("rm", "p")(t, root)
			run("touch", "p")(t, root)
			run("chmod", "0640", "p")(t, root)
		}, []string{"p type"}, false},
		{"trusted xattr", setxattr("d", "trusted.t", "1"), []string{"d xattr trusted.t"}, true},
		{"capability", setxattr("a", "security.capability", capNetRaw), []string{"a xattr security.capability"}, true},
		{"device numbers", func(t *testing.T, root string) {
			p := filepath.Join(root, "null")
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
				t.Fatal(err)
			}
			touchAll(t, root)
		}, []string{"null device"}, true},
		{"beyond PATH_MAX", func(t *testing.T, root string) {
			if err := unix.Fchmodat(openDeep(t, root), "leaf", 0o600, 0); err != nil {
				t.Fatal(err)
			}
		}, []string{deepLeaf + " mode"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.needRoot {
				testutil.Require(t, testutil.Root)
			}
			got := filepath.Join(t.TempDir(), "got")
			if err := os.Mkdir(got, 0o755); err != nil {
				t.Fatal(err)
			}
			fixture(t, got)
			c.mutate(t, got)
			diffs, err := Compare(base, got)
			if err != nil {
				t.Fatal(err)
			}
			var fields []string
			for _, d := range diffs {
				fields = append(fields, d.Path+" "+d.Field)
			}
			slices.Sort(fields)
			if !slices.Equal(fields, c.want) {
				t.Errorf("differences %q, want %q; report:\n%s", fields, c.want, Format(diffs, 50))
			}
		})
	}
}

func TestDigestSparse(t *testing.T) {
	dir := t.TempDir()
	content := make([]byte, 5<<20)
	copy(content[3<<20:], "middle")
	copy(content[len(content)-3:], "end")
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("middle"), 3<<20)
	f.WriteAt([]byte("end"), int64(len(content)-3))
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "dense"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	want := "sha256:" + hex.EncodeToString(sum[:])
	tree, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"sparse", "dense"} {
		if got := tree.Entries[n].Digest; got != want {
			t.Errorf("%s: digest %s, want %s", n, got, want)
		}
	}
}

func TestFormatCaps(t *testing.T) {
	diffs := make([]Difference, 60)
	for i := range diffs {
		diffs[i] = Difference{Path: strings.Repeat("n", 300), Field: "mode", Want: "0644", Got: "0600"}
	}
	out := Format(diffs, 50)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 51 || !strings.Contains(lines[50], "10 more") {
		t.Errorf("Format gave %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if len(lines[0]) > 300 {
		t.Errorf("long path not shortened: %d bytes", len(lines[0]))
	}
}
