package nbdserver

// Tests with real NBD clients: libnbd's nbdinfo, nbdcopy and nbdsh, and
// fio's nbd engine.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

func toolExports(t *testing.T) ([]byte, string, []Export) {
	dir := t.TempDir()
	data := randomBytes(1, 3<<20+4096)
	path, b := writeImage(t, dir, data)
	return data, path, []Export{
		{Name: "img", Description: "a test image", Backend: b},
		{Name: "small", Backend: memBackend(make([]byte, 8192))},
	}
}

func TestNbdinfo(t *testing.T) {
	testutil.Require(t, testutil.Tool("nbdinfo"))
	data, _, exports := toolExports(t)
	sock, _ := serveUnix(t, newServer(t, exports))

	check := func(t *testing.T, e testutil.NBDInfoExport, name, desc string, size int64) {
		t.Helper()
		if e.Name != name || e.Description != desc || e.Size != size {
			t.Errorf("export %q %q size %d, want %q %q size %d", e.Name, e.Description, e.Size, name, desc, size)
		}
		if !e.ReadOnly || !e.CanFlush || !e.CanMultiConn || e.CanTrim || e.CanZero {
			t.Errorf("flags: read-only %v flush %v multi-conn %v trim %v zero %v", e.ReadOnly, e.CanFlush, e.CanMultiConn, e.CanTrim, e.CanZero)
		}
		if e.BlockMin != 512 || e.BlockPref != 4096 || e.BlockMax != 33554432 {
			t.Errorf("block sizes %d/%d/%d, want 512/4096/33554432", e.BlockMin, e.BlockPref, e.BlockMax)
		}
	}

	for _, name := range []string{"img", ""} {
		info := testutil.NBDInfo(t, nbdURI(name, sock))
		if info.Protocol != "newstyle-fixed" || info.Structured || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo %q: %+v", name, info)
		}
		// The empty name is the default export: the first one.
		check(t, info.Exports[0], "img", "a test image", int64(len(data)))
	}

	info := testutil.NBDInfo(t, "--list", nbdURI("", sock))
	if len(info.Exports) != 2 {
		t.Fatalf("nbdinfo --list: %d exports, want 2: %+v", len(info.Exports), info)
	}
	check(t, info.Exports[0], "img", "a test image", int64(len(data)))
	check(t, info.Exports[1], "small", "", 8192)

	if out, err := runErr(t, "nbdinfo", nbdURI("nope", sock)); err == nil {
		t.Errorf("nbdinfo of an unknown export succeeded:\n%s", out)
	} else if !strings.Contains(string(out), "nope") {
		t.Logf("nbdinfo unknown export: %s", out)
	}
}

func TestNbdcopy(t *testing.T) {
	testutil.Require(t, testutil.Tool("nbdcopy"))
	data, _, exports := toolExports(t)
	sock, l := serveUnix(t, newServer(t, exports))
	dir := t.TempDir()

	for _, conns := range []string{"1", "4"} {
		t.Run("connections="+conns, func(t *testing.T) {
			before := l.accepted.Load()
			out := filepath.Join(dir, "out"+conns+".img")
			run(t, "nbdcopy", "--connections="+conns, "--threads="+conns, "--requests=16", "--request-size=262144",
				nbdURI("img", sock), out)
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("nbdcopy output differs from the export (%d vs %d bytes)", len(got), len(data))
			}
			// nbdcopy caps connections at threads (default: cores), and opens the
			// extra connections only when the server
			// advertises NBD_FLAG_CAN_MULTI_CONN.
			used := l.accepted.Load() - before
			if conns == "4" && used < 4 {
				t.Errorf("nbdcopy --connections=4 used %d connections: multi-conn not in use", used)
			}
			if conns == "1" && used != 1 {
				t.Errorf("nbdcopy --connections=1 used %d connections", used)
			}
		})
	}

	// Copying into the read-only export fails.
	if out, err := runErr(t, "nbdcopy", filepath.Join(dir, "out1.img"), nbdURI("img", sock)); err == nil {
		t.Errorf("nbdcopy into the read-only export succeeded:\n%s", out)
	}
}

// nbdsh runs a Python script in nbdsh connected to uri.
func nbdsh(t *testing.T, uri, script string) []byte {
	t.Helper()
	testutil.Require(t, testutil.Nbdsh)
	return run(t, "nbdsh", "-u", uri, "-c", script)
}

func TestNbdshWritesEPERM(t *testing.T) {
	_, _, exports := toolExports(t)
	sock, _ := serveUnix(t, newServer(t, exports))
	// Strict mode off, so that libnbd sends the commands a read-only export
	// refuses instead of refusing them itself: the errors come from the
	// server.
	out := nbdsh(t, nbdURI("img", sock), `
import errno
h.set_strict_mode(0)
assert h.is_read_only()
for name, op in [("write", lambda: h.pwrite(b"x" * 4096, 0)),
                 ("trim", lambda: h.trim(4096, 0)),
                 ("zero", lambda: h.zero(4096, 0))]:
    try:
        op()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (name, e.errnum, e.string)
    else:
        raise SystemExit(name + " succeeded on a read-only export")
h.flush()
assert len(h.pread(4096, 0)) == 4096
print("ok")
`)
	if strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("nbdsh: %s", out)
	}
}

func TestNbdshBackendErrorIsEIO(t *testing.T) {
	data := randomBytes(2, 1<<20)
	b := failingBackend{Backend: memBackend(data), badOff: 512 << 10, badLen: 4096}
	sock, _ := serveUnix(t, newServer(t, []Export{{Name: "flaky", Backend: b}}))
	out := nbdsh(t, nbdURI("flaky", sock), `
import errno
for off in (512 * 1024, 512 * 1024 - 4096 * 2):
    try:
        h.pread(4096 * 4, off)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, (off, e.errnum, e.string)
    else:
        raise SystemExit("read of the failing range succeeded")
# The same connection still serves the other ranges, also after
# several reads in flight at once.
cookies = [h.aio_pread(nbd.Buffer(4096), off) for off in range(0, 1 << 20, 4096)]
failed = 0
for c in cookies:
    try:
        while not h.aio_command_completed(c):
            h.poll(-1)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e.errnum
        failed += 1
assert failed == 1, failed
print(len(h.pread(65536, 0)), len(h.pread(4096, 1024 * 1024 - 4096)))
`)
	if strings.TrimSpace(string(out)) != "65536 4096" {
		t.Fatalf("nbdsh: %s", out)
	}
}
