package convert

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/test/internal/imagebuild"
	"github.com/sluice-project/sluice/test/testutil"
)

// TestFlattenLarge holds the acceptance cases that move the most data. They
// are kept to about a minute under -race and run in `make test`: do not
// gate them behind -short.
func TestFlattenLarge(t *testing.T) {
	e := newEnv(t)
	t.Run("sparse file over 4 GiB", func(t *testing.T) { sparseCase(t, e) })
	t.Run("GNU old-format sparse entry", func(t *testing.T) { gnuSparseCase(t, e) })
	t.Run("100000 entries in one directory", func(t *testing.T) { bigDirCase(t, e) })
}

const sparseSize = 4<<30 + 8<<10

// sparseCase flattens a layer written by GNU tar --sparse holding a
// 4 GiB + 8 KiB file with a few bytes at each end; the layer is a few KiB.
// It uses the PAX sparse format: containerd's applier rejects GNU tar's
// default old-GNU sparse entries (type 'S'), see gnuSparseCase. The applier
// also writes holes out as zeros, so the reference goes to a tmpfs: 4 GiB
// of memory until the case ends, and no disk. The flattened image may be
// sparse or not; the peak disk use of the case is logged.
func sparseCase(t *testing.T, e *env) {
	// In case the flattened image is not sparse.
	testutil.Require(t, testutil.FreeSpace(tmpBase, 2*sparseSize))
	d := newCaseDirs(t)
	refOnTmpfs(t, d, sparseSize+64<<20)
	defer logPeakDiskUse(t, tmpBase)()
	src := sparseSource(t, d, "big-sparse", sparseSize, map[int64]string{0: "head", sparseSize - 4: "tail"})
	e.flattenAndCompare(t, d, gnuTar(t, src, "big-sparse", "--format=posix"))
	logDiskUse(t, filepath.Join(d.ref, "big-sparse"))
	logDiskUse(t, filepath.Join(d.mnt, "big-sparse"))
}

// gnuSparseCase flattens GNU tar's default sparse entry (type 'S'), which
// containerd's applier refuses ("unhandled tar header type 83"). imageconv
// may refuse it too; if it converts it, the content must be that of the
// same file in PAX sparse format, which is the reference here.
func gnuSparseCase(t *testing.T, e *env) {
	d := newCaseDirs(t)
	src := sparseSource(t, d, "gnu-sparse", 64<<20, map[int64]string{1 << 20: "one", 40<<20 + 3: "two"})
	flat, err := e.flatten(t, d, gnuTar(t, src, "gnu-sparse"))
	if err != nil {
		t.Logf("refused, as containerd's applier does: %v", err)
		return
	}
	fsck(t, flat)
	mount(t, flat, d.mnt)
	compareWithReference(t, d, gnuTar(t, src, "gnu-sparse", "--format=posix"))
}

// sparseSource makes dir d.base/src holding one sparse file of size bytes
// with data only at the given offsets, and checks that it takes almost no
// disk.
func sparseSource(t *testing.T, d caseDirs, name string, size int64, data map[int64]string) string {
	t.Helper()
	src := filepath.Join(d.base, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, s := range data {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("%s takes %d bytes: the filesystem did not keep it sparse", name, st.Blocks*512)
	}
	return src
}

// gnuTar returns a gzip layer of one file of dir, written by GNU tar with
// --sparse, root ownership and a whole-second mtime, and checks that the
// holes were not stored.
func gnuTar(t *testing.T, dir, name string, flags ...string) []byte {
	t.Helper()
	testutil.Require(t, testutil.Tool("tar")) // GNU tar writes the sparse layers
	args := append([]string{"--sparse", "--numeric-owner", "--owner=0", "--group=0",
		"--mtime=@1700000000", "-C", dir, "-cf", "-"}, flags...)
	out, err := exec.Command("tar", append(args, name)...).Output()
	if err != nil {
		t.Fatalf("tar: %v", err)
	}
	if len(out) > 64<<10 {
		t.Fatalf("sparse tar of %s is %d bytes: GNU tar stored the holes", name, len(out))
	}
	gz, err := imagebuild.Gzip(out)
	if err != nil {
		t.Fatal(err)
	}
	return gz
}

// bigDirCase flattens one directory with 100,000 entries. Most are empty
// files with whole-second mtimes, which keep their tar headers to 512
// bytes; every 1000th has content, a nanosecond mtime and a hard link.
func bigDirCase(t *testing.T, e *env) {
	const n = 100_000
	d := newCaseDirs(t)
	refOnTmpfs(t, d, 2<<30)
	l := imagebuild.New().Layer().Dir("big", dir(0o755))
	modes := []int64{0o644, 0o600, 0o755}
	for i := range n - n/1000 {
		m := meta{Mode: modes[i%len(modes)], ModTime: at(1_700_000_000+int64(i), 0)}
		name := fmt.Sprintf("big/f%06d", i)
		if i%1000 != 0 {
			l.File(name, nil, m)
			continue
		}
		m.ModTime = at(1_700_000_000, int64(i))
		l.File(name, []byte(name), m).Hardlink(name+"-link", name, m)
	}
	e.flattenAndCompare(t, d, layers(t, l)...)
}

// logPeakDiskUse samples the free space of the filesystem holding dir
// until the returned func is called, which logs the largest drop seen.
// Other processes' use shows too, so it is logged, not asserted.
func logPeakDiskUse(t *testing.T, dir string) func() {
	free := func() int64 {
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			return 0
		}
		return int64(fs.Bavail) * fs.Bsize
	}
	start, lowest := free(), free()
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				lowest = min(lowest, free())
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
		t.Logf("peak disk use in %s during the case: %d MiB", dir, (start-lowest)>>20)
	}
}
