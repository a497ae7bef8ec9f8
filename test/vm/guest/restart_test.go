package guest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/sluice-project/sluice/test/testutil"
)

// reader reads every file of a rootfs in a loop, dropping the page cache
// before each pass so that each pass reads the device again, and records
// every failed read and wrong checksum.
type reader struct {
	root   string
	want   map[string]string
	paths  []string
	passes atomic.Int64
	inPass atomic.Bool
	stop   chan struct{}
	done   chan struct{}

	mu   sync.Mutex
	errs []string
}

func startReader(root string, want map[string]string) *reader {
	r := &reader{root: root, want: want, stop: make(chan struct{}), done: make(chan struct{})}
	for p := range want {
		r.paths = append(r.paths, p)
	}
	slices.Sort(r.paths)
	go r.loop()
	return r
}

func (r *reader) loop() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		if err := dropCaches(); err != nil {
			r.fail("drop caches: %v", err)
		}
		r.inPass.Store(true)
		for _, p := range r.paths {
			if sum, err := fileSum(filepath.Join(r.root, p)); err != nil {
				r.fail("%s: %v", p, err)
			} else if sum != r.want[p] {
				r.fail("%s: wrong checksum", p)
			}
		}
		r.inPass.Store(false)
		r.passes.Add(1)
	}
}

func (r *reader) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
}

func (r *reader) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.errs)
}

func (r *reader) finish() {
	close(r.stop)
	<-r.done
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// mountWatch checks, every 100 ms, that a mount point stays mounted from
// the same source.
type mountWatch struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	errs []string
}

func watchMounts(points map[string]string) *mountWatch {
	w := &mountWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			for p, src := range points {
				if got := mountSource(p); got != src {
					w.mu.Lock()
					if len(w.errs) < 10 {
						w.errs = append(w.errs, fmt.Sprintf("%s %s: mounted from %q, want %q", time.Now().Format("15:04:05.000"), p, got, src))
					}
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *mountWatch) finish() []string {
	close(w.stop)
	<-w.done
	return w.errs
}

// TestRestart: a container reads every file of its image in a loop while
// sluiced (attacher "kernel") is killed mid-read three times with SIGKILL
// and once stopped with SIGTERM, and started again each time. The new
// process adopts the device (RECONFIGURE); the reader sees no error and
// every checksum right, and neither the image mount nor the container's
// rootfs ever goes away.
func TestRestart(t *testing.T) {
	requireVM(t)
	ctx := testContext(t)
	dir := tempDir(t)
	base := randomTree("usr", 3, 300, 128<<10)
	app := randomTree("app", 4, 60, 256<<10, 8<<20)
	registry, img := pushConverted(t, base, app)
	a := newAgent(t, filepath.Join(dir, "agent"), registry, "3s", "2m")
	sn := a.client()
	c := runContainer(t, ctx, sn, img, "ctr-1", filepath.Join(dir, "ctr-1"))
	dev := mountSource(c.imageMnt)
	if !strings.HasPrefix(dev, "/dev/nbd") {
		t.Fatalf("the image mount %s is mounted from %q, not /dev/nbdN", c.imageMnt, dev)
	}
	t.Logf("image mount %s from %s; %d files, %d MiB", c.imageMnt, dev, len(img.files), img.files.size()>>20)
	watch := watchMounts(map[string]string{c.imageMnt: dev, c.rootfs: "overlay"})
	r := startReader(c.rootfs, img.files.sums())

	for i, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGKILL, syscall.SIGKILL, syscall.SIGTERM} {
		// Mid-pass: at least one pass done, and reading now.
		p0 := r.passes.Load()
		if !waitFor(3*time.Minute, func() bool { return r.passes.Load() > p0 && r.inPass.Load() }) {
			t.Fatalf("restart %d: the reader made no progress in 3 minutes", i+1)
		}
		time.Sleep(300 * time.Millisecond)
		killedAt := r.passes.Load()
		a.kill(sig)
		time.Sleep(time.Second) // reads wait meanwhile
		a.start()
		if !strings.Contains(a.log(), "adopted a kernel nbd device") || !strings.Contains(a.log(), "adopted image mount") {
			t.Errorf("restart %d (%v): the new sluiced did not adopt the device:\n%s", i+1, sig, a.log())
		}
		// A whole pass after the restart.
		if !waitFor(3*time.Minute, func() bool { return r.passes.Load() >= killedAt+2 }) {
			t.Fatalf("restart %d (%v): no complete pass in 3 minutes after it", i+1, sig)
		}
		t.Logf("restart %d (%v): the reader went on (%d passes so far)", i+1, sig, r.passes.Load())
	}
	r.finish()
	if errs := r.errors(); len(errs) > 0 {
		t.Errorf("the reader saw %d errors across the restarts, first: %s", len(errs), strings.Join(errs[:min(5, len(errs))], "\n"))
	}
	if errs := watch.finish(); len(errs) > 0 {
		t.Errorf("mounts went away or changed:\n%s", strings.Join(errs, "\n"))
	}
	report(t, "restart: %d passes over %d files (%d MiB), 3 SIGKILL + 1 SIGTERM restarts of sluiced mid-read, %d read errors",
		r.passes.Load(), len(img.files), img.files.size()>>20, len(r.errors()))

	// Everything goes when the container and the image do.
	c.unmount()
	sn = a.client()
	if err := sn.Remove(ctx, c.key); err != nil {
		t.Fatal(err)
	}
	testutil.RemoveAll(t, ctx, sn)
	if !waitFor(20*time.Second, func() bool { return !deviceState(t, dev).Connected }) {
		t.Errorf("%s still connected once the image is unused: %+v", dev, deviceState(t, dev))
	}
	a.kill(syscall.SIGTERM)
	if got := mountSource(c.imageMnt); got != "" {
		t.Errorf("the image mount is still mounted from %s", got)
	}
}

// TestAgentGoneTooLong: sluiced is killed and stays away past the
// dead-connection timeout: reads fail with EIO, promptly, instead of
// hanging. The next sluiced does not adopt the dead device: a new
// container gets a fresh one and reads right, and the dead one is detached
// once the old container is gone.
func TestAgentGoneTooLong(t *testing.T) {
	requireVM(t)
	ctx := testContext(t)
	dir := tempDir(t)
	registry, img := pushConverted(t, randomTree("app", 5, 60, 128<<10, 2<<20, 2<<20))
	a := newAgent(t, filepath.Join(dir, "agent"), registry, "2s", "4s")
	sn := a.client()
	c1 := runContainer(t, ctx, sn, img, "ctr-1", filepath.Join(dir, "ctr-1"))
	dead := mountSource(c1.imageMnt)
	if _, err := fileSum(filepath.Join(c1.rootfs, "app/d0/s0/f0000")); err != nil {
		t.Fatal(err)
	}

	a.kill(syscall.SIGKILL)
	if err := dropCaches(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := fileSum(filepath.Join(c1.rootfs, "app/big/b0"))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("read with sluiced gone: %v, want EIO", err)
		}
		report(t, "agent gone: a read failed with EIO %v after sluiced died (dead_conn_timeout 4s)", time.Since(start).Round(100*time.Millisecond))
	case <-time.After(90 * time.Second):
		t.Fatal("a read still hangs 90s after sluiced died (dead_conn_timeout 4s)")
	}
	// Later reads fail at once.
	start = time.Now()
	if _, err := fileSum(filepath.Join(c1.rootfs, "app/big/b1")); !errors.Is(err, syscall.EIO) {
		t.Errorf("a second read: %v, want EIO", err)
	} else if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a second read took %v to fail", d)
	}

	a.start()
	if !strings.Contains(a.log(), "cannot adopt the image mount's device") {
		t.Errorf("the new sluiced did not give up the dead device:\n%s", a.log())
	}
	sn = a.client()
	c2 := runContainer(t, ctx, sn, img, "ctr-2", filepath.Join(dir, "ctr-2"))
	fresh := mountSource(c2.imageMnt)
	if !strings.HasPrefix(fresh, "/dev/nbd") || fresh == dead {
		t.Errorf("the new container's image mount is from %q (the dead device: %s)", fresh, dead)
	}
	got, err := sumFiles(c2.rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if d := compareSums(got, img.files.sums()); len(d) > 0 {
		t.Errorf("the new container reads wrong:\n%s", strings.Join(d, "\n"))
	}
	if !deviceState(t, dead).Connected {
		t.Errorf("the dead device %s was detached while the old container used it", dead)
	}

	// The old container goes: its dead device is detached.
	c1.unmount()
	if err := sn.Remove(ctx, c1.key); err != nil {
		t.Fatal(err)
	}
	cleaner, ok := sn.(snapshots.Cleaner)
	if !ok {
		t.Fatal("the snapshotter client cannot Cleanup")
	}
	if err := cleaner.Cleanup(ctx); err != nil {
		t.Errorf("Cleanup: %v", err)
	}
	if st := deviceState(t, dead); st.Connected {
		t.Errorf("the dead device %s is still connected after Cleanup: %+v", dead, st)
	}
	c2.unmount()
	if err := sn.Remove(ctx, c2.key); err != nil {
		t.Fatal(err)
	}
	testutil.RemoveAll(t, ctx, sn)
	if !waitFor(20*time.Second, func() bool { return !deviceState(t, fresh).Connected }) {
		t.Errorf("%s still connected once the image is unused", fresh)
	}
	a.kill(syscall.SIGTERM)
}
