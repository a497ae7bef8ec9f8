package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/skipreason"
)

// childEnv, when set, makes a test of this file do what it checks in a
// child process: the test binary run again with the test selected.
const childEnv = "SLUICE_TESTUTIL_CHILD"

// runChild runs the test named name in a child process with env added,
// verbose, and returns its output and error.
func runChild(t *testing.T, name string, env []string, flags ...string) (string, error) {
	t.Helper()
	args := append([]string{"-test.run=^" + name + "$", "-test.v", "-test.count=1"}, flags...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRequireMissingToolFails: with the tool gone from PATH (PATH is an
// empty directory), a test that requires it fails, naming the tool and
// how to get it.
func TestRequireMissingToolFails(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		Require(t, Tool("nbdinfo"))
		t.Log("Require returned")
		return
	}
	out, err := runChild(t, "TestRequireMissingToolFails", []string{"PATH=" + t.TempDir()})
	if _, failed := err.(*exec.ExitError); !failed {
		t.Errorf("the test without nbdinfo in PATH did not fail (%v):\n%s", err, out)
	}
	for _, want := range []string{"--- FAIL: TestRequireMissingToolFails", "tool nbdinfo:", "scripts/install-deps.sh"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Require returned") {
		t.Errorf("the test went on after Require:\n%s", out)
	}
}

// fakeTB records what Require fails with, and goes on.
type fakeTB struct {
	testing.TB
	fatal string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

func TestRequireNamesEveryMissingNeed(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sluice-present-tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)

	// Met: the test goes on.
	Require(t, Tool("sluice-present-tool"), Device(dir), Check("a check", func() error { return nil }))

	var f fakeTB
	Require(&f, Tool("sluice-present-tool", "sluice-absent-tool"), Device("/dev/sluice-absent"),
		Check("the thing", func() error { return fmt.Errorf("not there; install it so") }),
		FreeSpace(dir, 1<<62))
	for _, want := range []string{
		"tool sluice-absent-tool:", "device /dev/sluice-absent:", "the thing: not there; install it so",
		"free space: 4398046511104 MiB in " + dir,
	} {
		if !strings.Contains(f.fatal, want) {
			t.Errorf("failure lacks %q:\n%s", want, f.fatal)
		}
	}
	if strings.Contains(f.fatal, "sluice-present-tool") {
		t.Errorf("failure names the tool that is there:\n%s", f.fatal)
	}
}

// TestSkipBecauseStatesReason: a skip through SkipBecause prints its
// reason as testreport reads it.
func TestSkipBecauseStatesReason(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		SkipBecause(t, NoKernelNBD, "attaches /dev/nbd0")
		t.Error("SkipBecause returned")
		return
	}
	out, err := runChild(t, "TestSkipBecauseStatesReason", nil)
	if err != nil || !strings.Contains(out, "--- SKIP: TestSkipBecauseStatesReason") {
		t.Fatalf("the child did not skip (%v):\n%s", err, out)
	}
	checkReason(t, out, NoKernelNBD, "attaches /dev/nbd0")
}

// TestSkipIfShort: under -short the test skips, for reason "short".
func TestSkipIfShort(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		SkipIfShort(t, "slow")
		t.Log("not short: went on")
		return
	}
	out, err := runChild(t, "TestSkipIfShort", nil, "-test.short")
	if err != nil || !strings.Contains(out, "--- SKIP: TestSkipIfShort") {
		t.Fatalf("the child did not skip under -short (%v):\n%s", err, out)
	}
	checkReason(t, out, Short, "slow")
	out, err = runChild(t, "TestSkipIfShort", nil)
	if err != nil || !strings.Contains(out, "not short: went on") {
		t.Errorf("the child did not go on without -short (%v):\n%s", err, out)
	}
}

// checkReason fails the test unless a line of out states reason with
// detail, as skipreason.Parse reads it.
func checkReason(t *testing.T, out string, reason Reason, detail string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if r, d, ok := skipreason.Parse(line); ok {
			if r != reason || d != detail {
				t.Errorf("skip states %q, %q; want %q, %q", r, d, reason, detail)
			}
			return
		}
	}
	t.Errorf("no line states a skip reason:\n%s", out)
}
