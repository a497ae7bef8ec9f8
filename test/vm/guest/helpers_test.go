package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/imageconv"
	"github.com/sluice-project/sluice/nbdserver"
	"github.com/sluice-project/sluice/snapshot"
	"github.com/sluice-project/sluice/test/testutil"
)

// requireVM skips the test where the kernel nbd driver is missing (it
// fails in the test VM); it loads the nbd module where it exists.
func requireVM(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if testutil.InVM() {
			t.Fatal("the test VM runs tests as root")
		}
		testutil.SkipBecause(t, testutil.NoKernelNBD, "runs as root with the kernel nbd driver, in test/vm's guest")
	}
	srv, err := nbdserver.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	err = snapshot.NewKernelAttacher(t.TempDir(), srv).Available(testContext(t))
	testutil.RequireKernelNBD(t, err)
}

// testContext carries a logger writing to the test's log, at info level
// (debug lines of every request would flood the VM's serial port).
func testContext(t testing.TB) context.Context {
	l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	return l.WithContext(context.Background())
}

// tempDir is a short directory under /tmp, removed at the end.
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// tree is an image's files: path -> content.
type tree map[string]string

// randomTree makes n files under a few directories of prefix, of sizes
// spread from empty to maxSize, with pseudo-random (incompressible)
// content, plus the big files given (prefix/big/bN).
func randomTree(prefix string, seed uint64, n, maxSize int, big ...int) tree {
	r := rand.New(rand.NewPCG(seed, seed))
	var seedBytes [32]byte
	seedBytes[0] = byte(seed)
	fill := rand.NewChaCha8(seedBytes)
	content := func(size int) string {
		b := make([]byte, size)
		fill.Read(b)
		return string(b)
	}
	tr := tree{}
	for i := range n {
		size := 0
		switch i % 4 {
		case 0:
			size = r.IntN(4096)
		case 1:
			size = r.IntN(64 << 10)
		case 2:
			size = r.IntN(maxSize + 1)
		}
		tr[fmt.Sprintf("%s/d%d/s%d/f%04d", prefix, i%7, i%3, i)] = content(size)
	}
	for i, size := range big {
		tr[fmt.Sprintf("%s/big/b%d", prefix, i)] = content(size)
	}
	return tr
}

// sums is path -> sha256 of each regular file.
func (tr tree) sums() map[string]string {
	s := map[string]string{}
	for p, c := range tr {
		sum := sha256.Sum256([]byte(c))
		s[p] = hex.EncodeToString(sum[:])
	}
	return s
}

func (tr tree) size() int64 {
	var n int64
	for _, c := range tr {
		n += int64(len(c))
	}
	return n
}

// layer is the tree as one image layer (a gzipped tar).
func (tr tree) layer(t testing.TB) []byte {
	t.Helper()
	return testutil.LayerBlob(t, testutil.LayerSpec(tr))
}

type noProgress struct{}

func (noProgress) Phase(string, int64) {}
func (noProgress) Advance(int64)       {}

// flatten writes the tree as an ext4 image with the project's converter.
func flatten(t testing.TB, tr tree, dir string) string {
	t.Helper()
	blob := tr.layer(t)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil })
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "image.ext4"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := imageconv.Flatten(testContext(t), []v1.Layer{l}, out, dir, noProgress{}); err != nil {
		t.Fatal(err)
	}
	return out.Name()
}

// fileBackend serves a file as an nbdserver export.
type fileBackend struct {
	*os.File
	size int64
}

func (b fileBackend) Size() int64 { return b.size }

// serveImage serves the ext4 image as export "image" of a new NBD server.
func serveImage(t testing.TB, img string) *nbdserver.Server {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := nbdserver.New([]nbdserver.Export{{Name: "image", Backend: fileBackend{f, fi.Size()}}})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// sumFiles reads every regular file under root and returns path ->
// sha256 (lost+found skipped).
func sumFiles(root string) (map[string]string, error) {
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() && rel == "lost+found" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		got[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	return got, err
}

// compareSums reports the differences of got from want, at most 10.
func compareSums(got, want map[string]string) []string {
	var diff []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diff = append(diff, p+": missing")
		} else if g != w {
			diff = append(diff, p+": wrong content")
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diff = append(diff, p+": not in the image")
		}
	}
	return diff[:min(len(diff), 10)]
}

// dropCaches makes the next reads of every file go to the devices again.
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

// mountSource returns the source device of the mount at point ("" if
// none), from mountinfo.
func mountSource(point string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != point {
			continue
		}
		for i := 6; i < len(f)-2; i++ {
			if f[i] == "-" {
				return f[i+2]
			}
		}
	}
	return ""
}

// deviceState returns STATUS's view of the device at path.
func deviceState(t testing.TB, path string) snapshot.NBDDevice {
	t.Helper()
	devs, err := snapshot.NBDStatus()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Path == path {
			return d
		}
	}
	t.Fatalf("STATUS does not list %s", path)
	return snapshot.NBDDevice{}
}

// waitFor polls cond every 50 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// report logs a figure for test/vm's summary.
func report(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Logf("REPORT "+format, args...)
}
