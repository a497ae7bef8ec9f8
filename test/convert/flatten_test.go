package convert

import (
	"archive/tar"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
)

type meta = imagebuild.Meta

// at is a timestamp with nanoseconds, which the flattened image must keep.
func at(sec, nsec int64) time.Time { return time.Unix(sec, nsec) }

var (
	t1 = at(1_700_000_000, 123_456_789)
	t2 = at(1_710_000_000, 987_654_321)
	t3 = at(1_720_000_000, 1)
)

func file(mode int64) meta { return meta{Mode: mode, ModTime: t1} }
func dir(mode int64) meta  { return meta{Mode: mode, ModTime: t2} }

// flattenCase builds the layers of one image; refRoot is where the
// reference will be extracted, for cases that depend on its length.
type flattenCase struct {
	name   string
	layers func(b *imagebuild.Builder, refRoot string) []*imagebuild.Layer
}

// TestFlatten checks that the flattened image of each test image, once
// mounted, is exactly the rootfs containerd extracts from its layers.
func TestFlatten(t *testing.T) {
	e := newEnv(t)
	for _, c := range flattenCases {
		t.Run(c.name, func(t *testing.T) {
			d := newCaseDirs(t)
			e.flattenAndCompare(t, d, layers(t, c.layers(imagebuild.New(), d.ref)...)...)
		})
	}
}

var flattenCases = []flattenCase{
	{"whiteouts and opaque dirs", whiteoutsAndOpaque},
	{"file replaced by dir and back", replacements},
	{"hard link to a lower layer", hardlinkCrossLayer},
	{"hard link whose target was deleted", hardlinkTargetDeleted},
	{"symlinks", symlinks},
	{"long and odd names", names},
	{"file sizes", sizes},
	{"modes and owners", modesAndOwners},
	{"xattrs", xattrs},
	{"devices and fifos", devicesAndFifos},
	{"mtimes", mtimes},
	{"entries below symlinked parents", symlinkedParents},
	{"names with ./ prefix", dotSlashNames},
	{"zero layers", func(*imagebuild.Builder, string) []*imagebuild.Layer { return nil }},
	{"one empty layer", func(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
		return []*imagebuild.Layer{b.Layer()}
	}},
}

func whiteoutsAndOpaque(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l1 := b.Layer().
		Dir("etc", dir(0o755)).File("etc/a", []byte("a1"), file(0o644)).File("etc/b", []byte("b1"), file(0o644)).
		File("gone", []byte("x"), file(0o644)).
		Dir("d", meta{Mode: 0o750, UID: 1, GID: 2, ModTime: t2}).File("d/x", []byte("x1"), file(0o644)).
		Dir("d/sub", dir(0o755)).File("d/sub/y", []byte("y"), file(0o644)).
		Dir("o", dir(0o755)).File("o/c1", []byte("c1"), file(0o644)).
		Dir("o/sub", dir(0o700)).File("o/sub/c2", []byte("c2"), file(0o600)).
		Dir("keep", dir(0o755)).File("keep/k", []byte("k"), file(0o644)).
		Dir("late", dir(0o755)).File("late/old", []byte("old"), file(0o644))
	l2 := b.Layer().
		File("late/new", []byte("new"), file(0o644)).Opaque("late"). // marker after a sibling
		Whiteout("etc/a").Whiteout("gone").
		// Opaque, and in the same layer a new entry and one that
		// existed below: both stay, the rest of d goes.
		Opaque("d").File("d/new", []byte("n"), file(0o644)).File("d/x", []byte("x2"), file(0o640)).
		Whiteout("o"). // a directory with children
		Whiteout("never-existed").
		Opaque("fresh").File("fresh/f", []byte("f"), file(0o644)) // opaque with nothing below
	l3 := b.Layer().
		File("etc/a", []byte("a3"), file(0o600)).                         // back after its whiteout
		Dir("o", dir(0o711)).File("o/c1", []byte("new c1"), file(0o644)). // old children stay gone
		Opaque("keep")
	return []*imagebuild.Layer{l1, l2, l3}
}

func replacements(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l1 := b.Layer().
		File("p", []byte("file p"), file(0o644)).
		Dir("q", dir(0o755)).File("q/c1", []byte("c1"), file(0o644)).
		Dir("q/sub", dir(0o755)).File("q/sub/c2", []byte("c2"), file(0o644)).
		Symlink("s", "p", file(0o777)).
		Dir("r", dir(0o755)).File("r/c", []byte("c"), file(0o644)).
		File("f", []byte("becomes a fifo"), file(0o644))
	l2 := b.Layer().
		Dir("p", dir(0o700)).File("p/inner", []byte("inner"), file(0o644)). // file -> dir
		File("q", []byte("now a file"), file(0o600)).                       // dir with children -> file
		Dir("s", dir(0o755)).File("s/in", []byte("in"), file(0o644)).       // symlink -> dir
		Whiteout("r").File("r", []byte("explicit whiteout, then a file"), file(0o644))
	l3 := b.Layer().
		Symlink("p", "q", file(0o777)). // dir -> symlink
		Fifo("f", file(0o600)).
		Dir("q", dir(0o755)).File("q/c1", []byte("c1 again"), file(0o644)) // file -> dir again
	return []*imagebuild.Layer{l1, l2, l3}
}

func hardlinkCrossLayer(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	tool := meta{Mode: 0o755, UID: 7, GID: 8, ModTime: t1, Xattrs: map[string]string{"user.tag": "v"}}
	old := file(0o644)
	l1 := b.Layer().
		Dir("bin", dir(0o755)).File("bin/tool", []byte("tool"), tool).File("bin/old", []byte("old"), old).
		File("bin/a", []byte("same layer"), old).Hardlink("bin/b", "bin/a", old)
	l2 := b.Layer().
		Dir("usr", dir(0o755)).Dir("usr/bin", dir(0o755)).
		Hardlink("usr/bin/tool2", "bin/tool", tool).
		Hardlink("bin/old2", "bin/old", old)
	l3 := b.Layer().
		Hardlink("x", "usr/bin/tool2", tool).            // a link to a link: one group of three
		File("bin/old", []byte("replaced"), file(0o600)) // bin/old2 keeps the old inode
	return []*imagebuild.Layer{l1, l2, l3}
}

func hardlinkTargetDeleted(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	m := meta{Mode: 0o640, UID: 3, GID: 4, ModTime: t1}
	l1 := b.Layer().File("A", []byte("content of A"), m).
		Dir("d", dir(0o755)).File("d/A", []byte("content of d/A"), m)
	l2 := b.Layer().Hardlink("B", "A", m).
		Dir("e", dir(0o755)).Hardlink("e/B", "d/A", m)
	l3 := b.Layer().Whiteout("A").Whiteout("d") // B and e/B remain, alone
	return []*imagebuild.Layer{l1, l2, l3}
}

func symlinks(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	link := file(0o777)
	l1 := b.Layer().
		Dir("etc", dir(0o755)).File("etc/target", []byte("t"), file(0o644)).
		Symlink("abs", "/etc/target", link).
		Symlink("rel", "etc/target", link).
		Symlink("etc/up", "../etc/target", link).
		Symlink("dangling", "/no/such/file", link).
		Symlink("loop-a", "loop-b", link).Symlink("loop-b", "loop-a", link).
		Symlink("self", "self", link).
		Symlink("dirlink", "etc", link).
		Symlink("owned", "etc/target", meta{Mode: 0o777, UID: 1000, GID: 1001, ModTime: t3}).
		// ext4 keeps targets under 60 bytes in the inode, longer ones in a block.
		Symlink("t59", strings.Repeat("a", 59), link).
		Symlink("t60", strings.Repeat("b", 60), link).
		Symlink("t61", strings.Repeat("c", 61), link).
		Symlink("t4095", strings.Repeat("d/", 2047)+"d", link).
		Hardlink("abs-hardlink", "abs", link) // a hard link to the symlink itself
	l2 := b.Layer().Symlink("rel", "etc/other", link) // a symlink replacing a symlink
	return []*imagebuild.Layer{l1, l2}
}

// names has 255-byte names, UTF-8 and non-UTF-8 names, and one path as long
// as the reference extraction allows: containerd's Apply works with
// absolute paths, which PATH_MAX (4096 with the NUL) bounds, so the
// longest path below the root is 4095 - len(refRoot) - 1 bytes.
func names(b *imagebuild.Builder, refRoot string) []*imagebuild.Layer {
	n255 := func(c string) string { return strings.Repeat(c, 255) }
	l := b.Layer().
		File(n255("f"), []byte("255"), file(0o644)).
		Dir(n255("d"), dir(0o755)).File(n255("d")+"/"+n255("g"), []byte("255/255"), file(0o644)).
		Symlink(n255("s"), n255("f"), file(0o777)).
		File("café", []byte("utf-8"), file(0o644)).
		Dir("日本語", dir(0o755)).File("日本語/ファイル", []byte("utf-8"), file(0o644)).
		File("emoji-🙂", nil, file(0o644)).
		File("latin1-caf\xe9", []byte("not utf-8"), file(0o644)).
		File("\xff\xfe", nil, file(0o644)).
		Dir("bad-\x80dir", dir(0o755)).File("bad-\x80dir/x\xc3\x28", []byte("x"), file(0o644)).
		File("new\nline", nil, file(0o644)).
		File("sp ace", nil, file(0o644))
	const dirName = 250
	total := 4095 - len(refRoot) - 1
	var p string
	for i := 0; len(p)+1+dirName+1 < total; i++ { // leave at least one byte for the leaf
		if p != "" {
			p += "/"
		}
		d := p + strings.Repeat(string(rune('A'+i%26)), dirName)
		l.Dir(d, dir(0o755))
		p = d
	}
	l.File(p+"/"+strings.Repeat("z", total-len(p)-1), []byte("deepest"), file(0o644))
	return []*imagebuild.Layer{l}
}

// symlinkedParents has entries whose parent path is a symlink in a lower
// layer, as in merged-/usr images: extraction follows the link (inside the
// root, even for an absolute target). No header is written for the
// symlinked parent itself, which would replace the link; the directories
// the links lead to have headers, as a builder's diff would give them.
func symlinkedParents(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l1 := b.Layer().
		Dir("usr", dir(0o755)).Dir("usr/lib", dir(0o755)).Dir("usr/sbin", dir(0o755)).
		Symlink("lib", "usr/lib", file(0o777)).
		Symlink("sbin", "/usr/sbin", file(0o777))
	l2 := b.Layer().
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755, ModTime: t2}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "usr/lib/", Mode: 0o755, ModTime: t3}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "usr/sbin/", Mode: 0o755, ModTime: t3}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeReg, Name: "lib/libx.so", Mode: 0o644, ModTime: t1, Size: 4}, []byte("elf!")).
		Raw(&tar.Header{Typeflag: tar.TypeReg, Name: "sbin/init", Mode: 0o755, ModTime: t1, Size: 4}, []byte("init"))
	return []*imagebuild.Layer{l1, l2}
}

// dotSlashNames is a layer as `tar -C dir .` writes it: every name starts
// with "./" and the root itself has an entry.
func dotSlashNames(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l1 := b.Layer().
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: t1}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "./etc/", Mode: 0o750, ModTime: t2}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeReg, Name: "./etc/f", Mode: 0o644, ModTime: t1, Size: 1}, []byte("f")).
		Raw(&tar.Header{Typeflag: tar.TypeReg, Name: "./etc/g", Mode: 0o644, ModTime: t1, Size: 1}, []byte("g")).
		Raw(&tar.Header{Typeflag: tar.TypeLink, Name: "./etc/h", Linkname: "./etc/f", Mode: 0o644, ModTime: t1}, nil)
	l2 := b.Layer().
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: t1}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeDir, Name: "./etc/", Mode: 0o750, ModTime: t3}, nil).
		Raw(&tar.Header{Typeflag: tar.TypeReg, Name: "./etc/.wh.g", ModTime: t1}, nil)
	return []*imagebuild.Layer{l1, l2}
}
