package skipreason

import (
	"os"
	"strings"
	"testing"
)

func TestParseReadsFormat(t *testing.T) {
	// As the testing package prints a skip message: indented, after the
	// file and line of the call.
	line := "        attach_test.go:42: " + Format(NoKernelNBD, "attaches /dev/nbd0: no such device") + "\n"
	r, detail, ok := Parse(line)
	if !ok || r != NoKernelNBD || detail != "attaches /dev/nbd0: no such device" {
		t.Errorf("Parse(%q) = %q, %q, %v", line, r, detail, ok)
	}
	for _, line := range []string{
		"    x_test.go:3: needs root\n",       // no reason stated
		"--- SKIP: TestX (0.00s)\n",           // the testing package's own line
		"skip[short]: not after a file:line",  // not a test's message
		"    x_test.go:3: skip[Not Valid]: x", // not a reason
	} {
		if r, _, ok := Parse(line); ok {
			t.Errorf("Parse(%q) found reason %q", line, r)
		}
	}
}

func TestReadAllowList(t *testing.T) {
	got, err := ReadAllowList(strings.NewReader("# comment\n\nshort # slow ones\n  no-kernel-nbd\n"))
	if err != nil || len(got) != 2 || !got[Short] || !got[NoKernelNBD] {
		t.Errorf("ReadAllowList = %v, %v", got, err)
	}
	for _, bad := range []string{"Short\n", "short\nshort\n", "two words\n", "unstated\n"} {
		if got, err := ReadAllowList(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadAllowList(%q) = %v, want an error", bad, got)
		}
	}
}

// TestRepoAllowList: the repo's allow-list reads, and allows the kernel
// nbd driver, which this machine kind lacks outside the VM.
func TestRepoAllowList(t *testing.T) {
	f, err := os.Open("../../skips.allow")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	allowed, err := ReadAllowList(f)
	if err != nil {
		t.Fatalf("test/skips.allow: %v", err)
	}
	if !allowed[NoKernelNBD] {
		t.Errorf("test/skips.allow does not allow %s", NoKernelNBD)
	}
}
