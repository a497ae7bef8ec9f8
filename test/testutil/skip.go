package testutil

import (
	"testing"

	"github.com/sluice-project/sluice/test/internal/skipreason"
)

// A Reason says why a test skips; `make test` sums skips up by reason and
// fails on one not listed in test/skips.allow.
type Reason = skipreason.Reason

// The reasons a test may skip for.
const (
	// NoKernelNBD: the test needs the kernel's nbd driver, which this
	// machine kind lacks outside the test VM.
	NoKernelNBD = skipreason.NoKernelNBD
	// Short: `go test -short` asked to leave slow tests out.
	Short = skipreason.Short
)

// SkipBecause skips the test for reason, saying what is left out in
// detail. It is only for what this machine kind cannot do (or what the
// run asked to leave out); a missing tool, root or device is a failure,
// see Require.
func SkipBecause(t testing.TB, reason Reason, detail string) {
	t.Helper()
	t.Skip(skipreason.Format(reason, detail))
}

// SkipIfShort skips the test under `go test -short`, saying why it is
// slow.
func SkipIfShort(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		SkipBecause(t, Short, why)
	}
}
