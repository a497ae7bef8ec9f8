package testutil

import (
	"fmt"
	"os"
	"testing"
)

// VMEnv is set to "1" inside the kernel-NBD test VM (test/vm), where the
// kernel nbd driver exists and a test needing it must run.
const VMEnv = "SLUICE_TEST_VM"

// InVM reports whether the test runs inside the test VM.
func InVM() bool { return os.Getenv(VMEnv) == "1" }

// RequireKernelNBD skips the test when the kernel nbd driver is unusable
// here (unavailable says why), as on this project's CI hosts, whose kernel
// has no nbd module: test/vm runs the test in a VM instead. Inside that VM
// it fails the test.
func RequireKernelNBD(t testing.TB, unavailable error) {
	t.Helper()
	if unavailable == nil {
		return
	}
	if InVM() {
		t.Fatalf("the kernel nbd driver is unusable in the test VM: %v", unavailable)
	}
	SkipBecause(t, NoKernelNBD, fmt.Sprintf("this host lacks it (%v); test/vm runs this test in a VM", unavailable))
}
