package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/snapshot"
	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// TestReadPath: the kernel attacher attaches an export of the project's
// NBD server; ext4 mounted -o ro and overlayfs on top read every file
// right (sha256); writes go to the overlay's upper layer. Detach leaves
// the device free (STATUS) and nothing mounted.
func TestReadPath(t *testing.T) {
	requireVM(t)
	ctx := testContext(t)
	dir := tempDir(t)
	tr := randomTree("usr", 1, 400, 256<<10, 16<<20)
	img := flatten(t, tr, dir)
	srv := serveImage(t, img)
	a := snapshot.NewKernelAttacher(filepath.Join(dir, "state"), srv, snapshot.KernelConnections(2))
	defer a.Close()
	dev, err := a.Attach(ctx, snapshot.Export{Name: "image"})
	if err != nil {
		t.Fatal(err)
	}
	if st := deviceState(t, dev.Path); !st.Connected || !strings.HasSuffix(st.Backend, "/image") {
		t.Errorf("STATUS of %s after Attach: %+v", dev.Path, st)
	}
	if ro, err := os.ReadFile("/sys/block/" + filepath.Base(dev.Path) + "/ro"); err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s read-only flag: %q, %v", dev.Path, ro, err)
	}
	if bs, err := os.ReadFile("/sys/block/" + filepath.Base(dev.Path) + "/queue/logical_block_size"); err != nil || strings.TrimSpace(string(bs)) != "4096" {
		t.Errorf("%s block size: %q, %v", dev.Path, bs, err)
	}

	lower, upper, work, merged := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{lower, upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(dev.Path, lower, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatalf("mount %s: %v", dev.Path, err)
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		unix.Unmount(lower, 0)
		t.Fatalf("mount overlay: %v", err)
	}
	got, err := sumFiles(merged)
	if err != nil {
		t.Error(err)
	}
	if d := compareSums(got, tr.sums()); len(d) > 0 {
		t.Errorf("files read through the overlay differ:\n%s", strings.Join(d, "\n"))
	}
	t.Logf("read %d files, %d MiB, through %s", len(got), tr.size()>>20, dev.Path)
	if err := os.WriteFile(filepath.Join(merged, "usr/d0/written"), []byte("x"), 0o644); err != nil {
		t.Errorf("write in the overlay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(upper, "usr/d0/written")); err != nil {
		t.Errorf("the write is not in the upper layer: %v", err)
	}

	for _, m := range []string{merged, lower} {
		if err := unix.Unmount(m, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Detach(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if st := deviceState(t, dev.Path); st.Connected {
		t.Errorf("STATUS of %s after Detach: %+v, want free", dev.Path, st)
	}
	if left, err := leakcheck.Find(dir); err != nil || !left.Empty() {
		t.Errorf("left behind: %v %v", left, err)
	}
	if devs, err := a.Devices(ctx); err != nil || len(devs) != 0 {
		t.Errorf("Devices after Detach: %v, %v", devs, err)
	}
}
