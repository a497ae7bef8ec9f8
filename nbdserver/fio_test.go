package nbdserver

import (
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestFio runs fio's nbd engine against the server: a short random read job
// and a short sequential one, each a few seconds.
func TestFio(t *testing.T) {
	needTool(t, "fio")
	if testing.Short() {
		t.Skip("fio jobs take seconds; skipped with -short")
	}
	_, _, exports := toolExports(t)
	sock, _ := serveUnix(t, newServer(t, exports))
	testutil.Fio(t, nbdURI("img", sock))
}
