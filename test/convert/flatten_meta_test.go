package convert

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
)

// The cases of TestFlatten about what an entry carries besides its place in
// the tree: content, modes, owners, xattrs, device numbers, mtimes.

// capNetBindService is a VFS_CAP_REVISION_2 security.capability value
// (effective, permitted = CAP_NET_BIND_SERVICE): binary, with NUL bytes.
const capNetBindService = "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

func sizes(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	rng := rand.New(rand.NewPCG(1, 2))
	l := b.Layer().
		File("empty", nil, file(0o644)).
		File("empty-suid", nil, file(0o4755)).
		File("empty-xattr", nil, meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.a": "b"}}).
		File("empty-link1", nil, file(0o600)).Hardlink("empty-link2", "empty-link1", file(0o600)).
		Dir("empty-dir", dir(0o755))
	// Around inline-data, block and extent boundaries.
	for _, n := range []int{1, 59, 60, 61, 4095, 4096, 4097, 2*65536 + 1, 1<<20 + 3} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		l.File(fmt.Sprintf("size-%d", n), buf, file(0o644))
	}
	return []*imagebuild.Layer{l}
}

func modesAndOwners(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l := b.Layer().
		File("suid", []byte("x"), file(0o4755)).
		File("sgid", []byte("x"), file(0o2755)).
		File("suid-sgid", []byte("x"), file(0o6711)).
		File("sticky-file", []byte("x"), file(0o1644)).
		File("all-bits", []byte("x"), file(0o7777)).
		File("no-bits", []byte("x"), file(0)).
		Dir("tmp", dir(0o1777)).File("tmp/f", nil, file(0o600)).
		Dir("sgid-dir", dir(0o2775)).File("sgid-dir/f", nil, file(0o644)).
		Dir("no-bits-dir", dir(0)).File("no-bits-dir/f", nil, file(0o644)).
		File("uid-65536", nil, meta{Mode: 0o644, UID: 65536, GID: 65537, ModTime: t1}).
		File("uid-100000", nil, meta{Mode: 0o644, UID: 100000, GID: 100001, ModTime: t1}).
		File("uid-4e9", nil, meta{Mode: 0o644, UID: 4_000_000_000, GID: 4_000_000_001, ModTime: t1}).
		Dir("dir-uid", meta{Mode: 0o755, UID: 70000, GID: 70001, ModTime: t2}).
		Symlink("link-uid", "suid", meta{Mode: 0o777, UID: 80000, GID: 80001, ModTime: t1}).
		Fifo("fifo-uid", meta{Mode: 0o620, UID: 90000, GID: 90001, ModTime: t1})
	return []*imagebuild.Layer{l}
}

func xattrs(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	many := map[string]string{}
	for i := range 10 {
		many[fmt.Sprintf("user.k%d", i)] = strings.Repeat("v", i*10)
	}
	l := b.Layer().
		File("cap", []byte("ping"), meta{Mode: 0o755, UID: 1, GID: 1, ModTime: t1, Xattrs: map[string]string{
			"security.capability": capNetBindService,
			"user.bin":            "\x00\x01\xff\x00",
			"user.empty":          "",
		}}).
		Dir("xdir", meta{Mode: 0o755, ModTime: t2, Xattrs: map[string]string{"user.dirattr": "d"}}).
		File("xdir/big", nil, meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.big": strings.Repeat("B", 2000)}}).
		File("many", nil, meta{Mode: 0o644, ModTime: t1, Xattrs: many}).
		File("linked", []byte("l"), meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.shared": "1"}}).
		Hardlink("linked2", "linked", meta{Mode: 0o644, ModTime: t1, Xattrs: map[string]string{"user.shared": "1"}})
	l2 := b.Layer().
		// A replaced file loses its xattrs. A re-declared directory
		// carries all its xattrs, as a builder's diff of a copied-up
		// directory does: containerd's plain applier would keep lower
		// xattrs missing from the header, its overlayfs snapshotter
		// would drop them, so an image relying on either is ambiguous.
		Dir("xdir", meta{Mode: 0o700, ModTime: t3, Xattrs: map[string]string{"user.dirattr": "d", "user.added": "a"}}).
		File("xdir/big", []byte("new inode"), file(0o644))
	return []*imagebuild.Layer{l, l2}
}

func devicesAndFifos(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l := b.Layer().
		Dir("dev", dir(0o755)).
		Char("dev/null", 1, 3, file(0o666)).Hardlink("dev/null-link", "dev/null", file(0o666)).
		Char("dev/tty9", 4, 9, meta{Mode: 0o620, GID: 5, ModTime: t1}).
		Block("dev/loop7", 7, 7, meta{Mode: 0o660, GID: 6, ModTime: t1}).
		// Numbers past 255 need ext4's new device encoding.
		Char("dev/pts-1000", 136, 1000, file(0o600)).
		Block("dev/big", 259, 70000, file(0o600)).
		Char("dev/zero-zero", 0, 0, file(0o600)).
		Dir("run", dir(0o755)).
		Fifo("run/fifo", meta{Mode: 0o620, UID: 5, GID: 6, ModTime: t1}).
		Fifo("run/fifo-sgid", file(0o2660))
	return []*imagebuild.Layer{l}
}

func mtimes(b *imagebuild.Builder, _ string) []*imagebuild.Layer {
	l := b.Layer().
		File("ns", nil, meta{Mode: 0o644, ModTime: at(1_700_000_000, 123_456_789)}).
		File("ns-max", nil, meta{Mode: 0o644, ModTime: at(1_700_000_000, 999_999_999)}).
		File("ns-one", nil, meta{Mode: 0o644, ModTime: at(1_700_000_000, 1)}).
		File("whole-second", nil, meta{Mode: 0o644, ModTime: at(1_000_000_000, 0)}).
		File("epoch", nil, meta{Mode: 0o644, ModTime: at(0, 0)}).
		File("before-1970", nil, meta{Mode: 0o644, ModTime: at(-86_400, 5)}). // containerd clamps to the epoch
		File("after-2038", nil, meta{Mode: 0o644, ModTime: time.Date(2040, 2, 29, 12, 0, 0, 424242, time.UTC)}).
		Dir("dir-ns", meta{Mode: 0o755, ModTime: at(1_650_000_000, 555_555_555)}).
		Symlink("dir-ns/link-ns", "../ns", meta{Mode: 0o777, ModTime: at(1_600_000_000, 777)}).
		Fifo("fifo-ns", meta{Mode: 0o644, ModTime: at(1_600_000_000, 888)}).
		Char("char-ns", 1, 5, meta{Mode: 0o644, ModTime: at(1_600_000_000, 999)})
	// A lower file whose mtime an upper layer changes.
	l2 := b.Layer().File("ns", nil, meta{Mode: 0o644, ModTime: at(1_700_000_001, 42)})
	return []*imagebuild.Layer{l, l2}
}
