package testutil

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"
)

// runTool runs a client tool with a deadline and returns its stdout; the
// test fails, showing stderr, if the tool does.
func runTool(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, stderr.Bytes())
	}
	return out
}
