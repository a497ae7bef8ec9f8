package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/testutil"
)

// TestAgentDoesNotLinkTheConverter: the node side reads artifacts through
// imageconv/artifact and never links the converter or its ext4 writer
// (hcsshim), which has no business on a node.
func TestAgentDoesNotLinkTheConverter(t *testing.T) {
	testutil.Require(t, testutil.Tool("go"))
	goBin, _ := exec.LookPath("go")
	const module = "github.com/sluice-project/sluice/"
	out, err := exec.Command(goBin, "list", "-deps", module+"cmd/sluiced", module+"blockcache", module+"blockcache/source").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed only %d packages: %s", len(deps), out)
	}
	for _, p := range deps {
		if strings.Contains(p, "github.com/Microsoft/hcsshim") || p == module+"imageconv" {
			t.Errorf("the agent links %s", p)
		}
	}
}
