package guest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-project/sluice/snapshot"
)

// TestMultiConn: a device with 4 connections and 4 concurrent readers
// reads right. The throughput of 4 connections over 1 (cold page cache,
// O_DIRECT 1 MiB reads of 4 files at once, the export in memory) is
// reported, not asserted: under emulation it says little about hardware.
func TestMultiConn(t *testing.T) {
	requireVM(t)
	const fileSize = 16 << 20
	dir := tempDir(t)
	tr := randomTree("data", 2, 8, 4096, fileSize, fileSize, fileSize, fileSize)
	img := flatten(t, tr, dir)
	want := tr.sums()
	rates := map[int]float64{}
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("%dConnections", conns), func(t *testing.T) {
			rates[conns] = readConcurrently(t, img, filepath.Join(dir, fmt.Sprint(conns)), conns, want)
		})
	}
	if rates[1] > 0 && rates[4] > 0 {
		report(t, "multi-connection: 4 readers of 16 MiB files, O_DIRECT 1 MiB: 1 connection %.1f MiB/s, 4 connections %.1f MiB/s, ratio %.2f (%d vCPUs)",
			rates[1], rates[4], rates[4]/rates[1], runtime.NumCPU())
	}
}

// readConcurrently attaches img with conns connections, reads the big
// files with a reader each, checks them, and returns MiB/s.
func readConcurrently(t *testing.T, img, dir string, conns int, want map[string]string) float64 {
	ctx := testContext(t)
	if err := os.MkdirAll(filepath.Join(dir, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := snapshot.NewKernelAttacher(filepath.Join(dir, "state"), serveImage(t, img), snapshot.KernelConnections(conns))
	defer a.Close()
	dev, err := a.Attach(ctx, snapshot.Export{Name: "image"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach(ctx, dev)
	mnt := filepath.Join(dir, "mnt")
	if err := unix.Mount(dev.Path, mnt, "ext4", unix.MS_RDONLY, "noload"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, 0)
	// The block layer makes at most one hardware queue per CPU, and each
	// queue sends on its own connection.
	if n, _ := filepath.Glob("/sys/block/" + filepath.Base(dev.Path) + "/mq/*"); len(n) != min(conns, runtime.NumCPU()) {
		t.Errorf("%s has %d hardware queues, want one per connection (%d) up to one per CPU (%d)", dev.Path, len(n), conns, runtime.NumCPU())
	}
	files, _ := filepath.Glob(filepath.Join(mnt, "data", "big", "*"))
	if len(files) != 4 {
		t.Fatalf("big files: %v", files)
	}
	if err := dropCaches(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(files))
	var total int64
	var mu sync.Mutex
	start := time.Now()
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := readDirect(f)
			errs[i] = err
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Then through the page cache, with checksums, four at a time again.
	got, err := sumFiles(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if d := compareSums(got, want); len(d) > 0 {
		t.Errorf("files read with %d connections differ:\n%s", conns, strings.Join(d, "\n"))
	}
	rate := float64(total) / (1 << 20) / elapsed.Seconds()
	t.Logf("%d connections: %d MiB in %v, %.1f MiB/s", conns, total>>20, elapsed.Round(time.Millisecond), rate)
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Detach(ctx, dev); err != nil {
		t.Fatal(err)
	}
	return rate
}

// readDirect reads a file with O_DIRECT in 1 MiB reads and returns the
// bytes read.
func readDirect(path string) (int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(buf)
	var total int64
	for {
		n, err := unix.Pread(fd, buf, total)
		if err != nil {
			return total, fmt.Errorf("%s at %d: %w", path, total, err)
		}
		if n == 0 {
			return total, nil
		}
		total += int64(n)
	}
}
