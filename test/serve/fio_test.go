package serve

import (
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestFio runs fio's nbd engine against the export, starting from a cold
// cache: a random 4 KiB read job at queue depth 16, then a sequential 1 MiB
// one, 2 s each. Both must finish without error having read something.
func TestFio(t *testing.T) {
	testutil.Require(t, testutil.Tool("fio"))
	e := getEnv(t)
	srv := e.startServer(t, serveOpts{})
	testutil.Fio(t, srv.uri(e.image))
}
