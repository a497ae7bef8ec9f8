package serve

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-project/sluice/test/testutil"
)

// nbdcopyExport copies uri to a file with nbdcopy and returns the bytes.
func nbdcopyExport(t *testing.T, uri string, args ...string) []byte {
	t.Helper()
	b, err := nbdcopy(t.TempDir(), uri, args...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nbdcopy copies uri to a file in dir and returns the bytes; it may run
// outside the test's goroutine.
func nbdcopy(dir, uri string, args ...string) ([]byte, error) {
	out := filepath.Join(dir, "copy.img")
	if _, err := runErr(2*time.Minute, "nbdcopy", append(append([]string{}, args...), uri, out)...); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// TestNbdcopy copies the export with nbdcopy from a cold cache, then again
// from the warm one: both copies equal the ext4 image byte for byte. The
// cold copy fetches each stored chunk exactly once (its data blob bytes
// equal the blob's size), the warm one fetches nothing. It serves with
// readahead and metadata first, as sluice serve does by default: neither
// fetches a chunk twice.
func TestNbdcopy(t *testing.T) {
	testutil.Require(t, testutil.Tool("nbdcopy"))
	e := getEnv(t)
	// Counted from before the start: metadata comes in as it starts.
	before := e.proxy.Stats()
	srv := e.startServer(t, serveOpts{args: []string{"--readahead", "4MiB", "--metadata-first"}})

	// Several connections and requests in flight: concurrent faults on the
	// same chunks.
	cold := nbdcopyExport(t, srv.uri(e.image), "--connections=2", "--requests=16")
	e.compareWithRef(t, "nbdcopy, cold cache", cold)
	mid := e.proxy.Stats()
	t.Logf("cold copy: %d data blob requests, %d bytes (blob: %d bytes)", mid.DataRequests-before.DataRequests, mid.DataBytes-before.DataBytes, e.dataLen)
	if got := mid.DataBytes - before.DataBytes; got != e.dataLen {
		t.Errorf("cold copy fetched %d bytes of the data blob, want each stored chunk once: %d", got, e.dataLen)
	}

	warm := nbdcopyExport(t, srv.uri(""))
	e.compareWithRef(t, "nbdcopy, warm cache", warm)
	after := e.proxy.Stats()
	if n := after.DataRequests - mid.DataRequests; n != 0 {
		t.Errorf("warm copy made %d data blob requests, want 0", n)
	}
}
