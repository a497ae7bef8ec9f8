package nbdserver

import (
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestFio runs fio's nbd engine against the server: a short random read job
// and a short sequential one, each a few seconds.
func TestFio(t *testing.T) {
	testutil.SkipIfShort(t, "fio jobs take seconds")
	testutil.Require(t, testutil.Tool("fio"))
	_, _, exports := toolExports(t)
	sock, _ := serveUnix(t, newServer(t, exports))
	testutil.Fio(t, nbdURI("img", sock))
}
