package serve

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

// checkExport checks what acceptance 1 asks of every export: read-only,
// the ext4 image's size, the block sizes.
func (e *env) checkExport(t *testing.T, what string, x testutil.NBDInfoExport, name string) {
	t.Helper()
	if x.Name != name {
		t.Errorf("%s: export name %q, want %q", what, x.Name, name)
	}
	if !x.ReadOnly {
		t.Errorf("%s: not read-only", what)
	}
	if x.Size != int64(len(e.ref)) {
		t.Errorf("%s: size %d, the exported ext4 image has %d bytes", what, x.Size, len(e.ref))
	}
	if x.BlockMin != 512 || x.BlockPref != 4096 || x.BlockMax != 32<<20 {
		t.Errorf("%s: block sizes %d/%d/%d, want 512/4096/33554432", what, x.BlockMin, x.BlockPref, x.BlockMax)
	}
}

// TestNbdinfo serves the image under two references, by tag and by
// digest: each is an export named by the reference exactly as given, the
// first is also the default export, and all are read-only with the ext4
// image's size and the block sizes 512/4096/32 MiB. It also checks the
// socket is 0600, the --tcp listener on 127.0.0.1, and that SIGTERM stops
// the server cleanly.
func TestNbdinfo(t *testing.T) {
	e := getEnv(t)
	port := freePort(t)
	srv := e.startServer(t, serveOpts{images: []string{e.image, e.imageByDigest}, tcp: fmt.Sprintf("127.0.0.1:%d", port)})

	fi, err := os.Stat(srv.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s has mode %v, want a socket with 0600", srv.sock, fi.Mode())
	}

	list := testutil.NBDInfo(t, "--list", srv.uri(""))
	if len(list.Exports) != 2 {
		t.Fatalf("nbdinfo --list: %d exports, want 2: %+v", len(list.Exports), list)
	}
	e.checkExport(t, "listed export 0", list.Exports[0], e.image)
	e.checkExport(t, "listed export 1", list.Exports[1], e.imageByDigest)

	for _, c := range []struct{ what, uri, name string }{
		{"default export", srv.uri(""), e.image},
		{"export by tag", srv.uri(e.image), e.image},
		{"export by digest", srv.uri(e.imageByDigest), e.imageByDigest},
		{"default export over TCP", fmt.Sprintf("nbd://127.0.0.1:%d", port), e.image},
		{"export by tag over TCP", fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, e.image), e.image},
	} {
		info := testutil.NBDInfo(t, c.uri)
		if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
			t.Errorf("nbdinfo %s: %+v", c.uri, info)
			continue
		}
		e.checkExport(t, c.what, info.Exports[0], c.name)
	}

	if out, err := run(t, time.Minute, "nbdinfo", srv.uri(e.image+"-no-such-tag")); err == nil {
		t.Errorf("nbdinfo of an export not served succeeded:\n%s", out)
	}

	// A clean stop: exit status 0 on SIGTERM, the socket removed.
	if err := srv.stop(); err != nil {
		t.Errorf("sluice serve after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(srv.sock); !os.IsNotExist(err) {
		t.Errorf("socket %s still there after the server stopped: %v", srv.sock, err)
	}
}

// TestTCPNeedsAllowRemote checks that --tcp refuses a non-loopback address
// without --allow-remote, before listening on anything.
func TestTCPNeedsAllowRemote(t *testing.T) {
	e := getEnv(t)
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "nbd.sock")
	port := freePort(t)
	// An empty host, like 0.0.0.0 and ::, means every interface.
	for _, host := range []string{"0.0.0.0", "[::]", ""} {
		addr := fmt.Sprintf("%s:%d", host, port)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, e.sluice, "serve", "--plain-http", "--socket", sock,
			"--cache-dir", filepath.Join(dir, "cache"), "--tcp", addr, e.image).CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if timedOut {
			t.Errorf("sluice serve --tcp %s without --allow-remote kept running (killed after 30 s):\n%s", addr, out)
		} else if err == nil {
			t.Errorf("sluice serve --tcp %s without --allow-remote exited 0:\n%s", addr, out)
		}
		if !strings.Contains(string(out), "--allow-remote") {
			t.Errorf("sluice serve --tcp %s: the error does not mention --allow-remote:\n%s", addr, out)
		}
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("sluice serve --tcp %s created its socket although it refused to start", addr)
			os.Remove(sock)
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			t.Errorf("something listens on port %d after sluice serve --tcp %s was refused", port, addr)
		}
	}
}
