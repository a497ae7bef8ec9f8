package serve

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/internal/faultproxy"
	"github.com/sluice-project/sluice/test/testutil"
)

// TestNbdcopyThroughOutage starts a cold nbdcopy (many reads in flight, on
// several connections) with the registry down and brings it back within
// the read timeout: every read waits and succeeds, and the copy equals the
// ext4 image.
func TestNbdcopyThroughOutage(t *testing.T) {
	testutil.Require(t, testutil.Tool("nbdcopy"))
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	before := e.proxy.Stats()
	e.proxy.SetMode(faultproxy.Down)
	var wg sync.WaitGroup
	var got []byte
	var err error
	dir := t.TempDir()
	wg.Go(func() { got, err = nbdcopy(dir, srv.uri(e.image), "--connections=2", "--requests=16") })
	time.Sleep(outage)
	refused := e.proxy.Stats().Refused - before.Refused
	e.proxy.SetMode(faultproxy.Pass)
	wg.Wait()
	if err != nil {
		t.Fatalf("nbdcopy, registry down for %v from its start: %v", outage, err)
	}
	e.compareWithRef(t, "nbdcopy through a registry outage", got)
	if refused == 0 {
		t.Error("no request was refused while the registry was down: the fault was not exercised")
	}
}

// TestRegistryDownAtFirstRead takes the registry down after the server
// started but before anything was read from it, so the server's first
// contact (the registry ping and token exchange) fails too: the read
// started during the outage succeeds once the registry is back within the
// read timeout.
func TestRegistryDownAtFirstRead(t *testing.T) {
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	sh := openShell(t, srv.uri(e.image))
	i := e.picker().next(t)
	off := e.chunkOff(i)
	e.proxy.SetMode(faultproxy.Down)
	sh.start(t, off, blockLen)
	time.Sleep(outage)
	e.proxy.SetMode(faultproxy.Pass)
	r := sh.result(t)
	if r.Errno != 0 || r.Sum != e.refSum(off, blockLen) {
		t.Errorf("first read, registry down for %v: errno %d after %v (%s), right bytes: %v", outage, r.Errno, r.Elapsed, r.Message, r.Sum == e.refSum(off, blockLen))
	}
	t.Logf("first read answered after %v", r.Elapsed.Round(time.Millisecond))
}

// TestStopWhileReadsWait stops the server with SIGTERM while a read waits
// for a registry that is down, with the default 30 s read timeout: the
// server exits 0 promptly instead of waiting for the read.
func TestStopWhileReadsWait(t *testing.T) {
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{args: []string{"--read-timeout", "30s"}})
	sh := openShell(t, srv.uri(e.image))
	i := e.picker().next(t)
	e.proxy.SetMode(faultproxy.Down)
	sh.start(t, e.chunkOff(i), blockLen)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := srv.stop(); err != nil {
		t.Errorf("sluice serve, SIGTERM during a waiting read: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("sluice serve took %v to exit after SIGTERM", d)
	} else {
		t.Logf("exited %v after SIGTERM", d.Round(time.Millisecond))
	}
}

// TestOneServerPerSocketAndCache starts a second server on the socket of a
// running one, and a third on its cache directory: both refuse to start,
// saying why, and the first one keeps serving.
func TestOneServerPerSocketAndCache(t *testing.T) {
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	dir := shortTempDir(t)
	for _, c := range []struct {
		what, sock, cache, want string
	}{
		{"same socket", srv.sock, filepath.Join(dir, "cache"), "in use"},
		{"same cache", filepath.Join(dir, "other.sock"), srv.cacheDir, "in use"},
	} {
		out, err := e.sluiceCmd("serve", "--plain-http", "--socket", c.sock, "--cache-dir", c.cache, "--background-rate", "0", e.image)
		if err == nil {
			t.Errorf("%s: a second sluice serve exited 0:\n%s", c.what, out)
		} else if !strings.Contains(string(out), c.want) {
			t.Errorf("%s: a second sluice serve failed without saying %q: %v\n%s", c.what, c.want, err, out)
		}
	}
	if _, err := os.Lstat(srv.sock); err != nil {
		t.Fatalf("the first server's socket: %v", err)
	}
	info := testutil.NBDInfo(t, srv.uri(""))
	if len(info.Exports) != 1 || info.Exports[0].Name != e.image {
		t.Errorf("the first server after the refused starts: %+v", info)
	}
	if err := srv.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the first server is gone: %v", err)
	}
}
