package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/sluice-project/sluice/test/internal/skipreason"
)

const fixture = "example.com/fixture/"

// allowed is the reasons the tests allow, as test/skips.allow does.
var allowed = map[skipreason.Reason]bool{skipreason.NoKernelNBD: true, skipreason.Short: true}

// replay runs the report over the recorded stream of testdata/fixture,
// keeping the events keep accepts, and returns the report, what it
// printed and whether it passed.
func replay(t *testing.T, keep func(event) bool) (*report, string, bool) {
	t.Helper()
	f, err := os.Open("testdata/stream.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var in bytes.Buffer
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("recorded stream: %v: %s", err, sc.Bytes())
		}
		if keep(e) {
			in.Write(sc.Bytes())
			in.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r := newReport(&out, allowed, "test/skips.allow")
	if err := r.read(&in); err != nil {
		t.Fatal(err)
	}
	ok := r.summary()
	return r, out.String(), ok
}

func TestReportWholeStream(t *testing.T) {
	r, out, ok := replay(t, func(event) bool { return true })
	if ok {
		t.Errorf("the run passed; it has failures and skips whose reason is not allowed:\n%s", out)
	}

	// Skips, by reason, with their detail.
	got := map[string]skipreason.Reason{}
	for _, s := range r.skipped {
		got[strings.TrimPrefix(s.pkg, fixture)+" "+s.test+": "+s.detail] = s.reason
	}
	want := map[string]skipreason.Reason{
		"skips TestShortSub/slow: takes long":     skipreason.Short,
		"skips TestUnstated: needs root":          skipreason.Unstated,
		"skips TestKernelNBD: attaches /dev/nbd0": skipreason.NoKernelNBD,
		"skips TestNotAllowed: wants 8 GiB":       "no-disk",
	}
	if len(got) != len(want) || len(r.skipped) != len(want) {
		t.Errorf("skips %v, want %v", got, want)
	}
	for k, reason := range want {
		if got[k] != reason {
			t.Errorf("skip %q: reason %q, want %q", k, got[k], reason)
		}
	}
	for _, line := range []string{
		"skipped: 4 tests; by reason:",
		"  short (allowed): 1",
		"  no-kernel-nbd (allowed): 1",
		"  no-disk (NOT ALLOWED: not in test/skips.allow): 1",
		"  unstated (NOT ALLOWED: not in test/skips.allow): 1",
		"tests: 5 passed, 3 failed, 4 skipped; packages: 5, 3 failed",
		"FAIL: 3 tests failed; 3 packages failed; 2 skipped for a reason not in test/skips.allow",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("no line %q in the report:\n%s", line, out)
		}
	}

	// Failures: the tests, the packages, each named at the end.
	wantFailed := []string{"fails TestFails/bad", "fails TestFails", "panics TestPanics"}
	wantFailedPk := []string{"broken", "fails", "panics"}
	for _, f := range wantFailed {
		if !strings.Contains(out, "\nfailed: "+fixture+f+"\n") {
			t.Errorf("report does not name %q as failed:\n%s", f, out)
		}
	}
	for _, f := range wantFailedPk {
		if !strings.Contains(out, "\nfailed package: "+fixture+f+"\n") {
			t.Errorf("report does not name package %q as failed:\n%s", f, out)
		}
	}
	if len(r.failed) != len(wantFailed) || len(r.failedPk) != len(wantFailedPk) {
		t.Errorf("failed %q and packages %q, want %q and %q", r.failed, r.failedPk, wantFailed, wantFailedPk)
	}

	// The output of what failed is printed; that of what passed is not,
	// as plain go test does.
	for _, s := range []string{
		"cannot use \"x\"", // the build error
		"FAIL\t" + fixture + "broken [build failed]",
		"before the subtests", "running bad", "tool nbdinfo: not found", "--- FAIL: TestFails/bad",
		"fixture: set up", "FAIL\t" + fixture + "fails\t",
		"assignment to entry in nil map", "FAIL\t" + fixture + "panics\t",
		"ok  \t" + fixture + "skips\t", "?   \t" + fixture + "notests\t[no test files]",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	for _, s := range []string{"quiet when it passes", "some log line", "only a log line", "=== RUN   TestShortSub"} {
		if strings.Contains(out, s) {
			t.Errorf("report prints %q, output of a test that passed or skipped:\n%s", s, out)
		}
	}
}

// TestReportAllowedSkipsPass: the package of skips alone, without the
// skips whose reason is not allowed, passes.
func TestReportAllowedSkipsPass(t *testing.T) {
	r, out, ok := replay(t, func(e event) bool {
		return e.Package == fixture+"skips" && e.Test != "TestUnstated" && e.Test != "TestNotAllowed"
	})
	if !ok {
		t.Errorf("the run failed:\n%s", out)
	}
	if len(r.skipped) != 2 || !strings.Contains(out, "skipped: 2 tests; by reason:\n") || !strings.HasSuffix(out, "PASS\n") {
		t.Errorf("want 2 skips, allowed, and PASS:\n%s", out)
	}
}

// TestReportUnfinishedPackageFails: a stream cut off in the middle of a
// package (go test killed) fails, printing what the package wrote.
func TestReportUnfinishedPackageFails(t *testing.T) {
	r, out, ok := replay(t, func(e event) bool {
		return e.Package == fixture+"fails" && (e.Test != "" || e.Action == "output" && !isFinal(e.Output))
	})
	if ok || len(r.failedPk) != 1 || !strings.Contains(out, "fixture: set up") || !strings.Contains(out, "FAIL\t"+fixture+"fails (no result)") {
		t.Errorf("an unfinished package must fail, printing its output: failed %q\n%s", r.failedPk, out)
	}
}

func TestReportEmptyStreamFails(t *testing.T) {
	_, out, ok := replay(t, func(event) bool { return false })
	if ok || !strings.Contains(out, "no package tested") {
		t.Errorf("an empty stream passed:\n%s", out)
	}
}
