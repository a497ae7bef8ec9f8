package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/sluice-project/sluice/test/internal/skipreason"
)

// event is one line of `go test -json` (see `go doc test2json`).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	ImportPath  string // of build-output and build-fail events
	FailedBuild string
}

// line is one line of a package's output, with the test that wrote it
// ("" for the package itself).
type line struct {
	test, text string
}

// pkgState is what is kept of a running package: its output not yet
// printed or dropped, the "ok"/"FAIL" line go test ends it with, and the
// last skip message of each test.
type pkgState struct {
	lines []line
	final string
	skips map[string]skip
}

// skip is one skipped test and why.
type skip struct {
	pkg, test string
	reason    skipreason.Reason
	detail    string
}

// report follows the stream: it prints as plain go test would and counts.
type report struct {
	w         io.Writer
	allowed   map[skipreason.Reason]bool
	allowPath string

	pkgs     map[string]*pkgState
	packages int
	passed   int
	skipped  []skip
	failed   []string // "PACKAGE TEST"
	failedPk []string // packages that failed (a test, the build, a panic...)
}

func newReport(w io.Writer, allowed map[skipreason.Reason]bool, allowPath string) *report {
	return &report{w: w, allowed: allowed, allowPath: allowPath, pkgs: map[string]*pkgState{}}
}

// read consumes the stream to its end. A line that is not a JSON event
// (go test prints some itself) is copied out as it is.
func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var e event
		if b := sc.Bytes(); len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &e) != nil {
			fmt.Fprintln(r.w, sc.Text())
			continue
		}
		r.event(e)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	// A package the stream left unfinished (go test killed, a crash)
	// failed.
	for _, name := range slices.Sorted(maps.Keys(r.pkgs)) {
		r.event(event{Action: "fail", Package: name})
	}
	return nil
}

func (r *report) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{skips: map[string]skip{}}
		r.pkgs[name] = p
	}
	return p
}

func (r *report) event(e event) {
	if e.Action == "build-output" {
		io.WriteString(r.w, e.Output)
		return
	}
	if e.Action == "build-fail" {
		return // its package's fail event follows
	}
	p := r.pkg(e.Package)
	switch {
	case e.Action == "output" && e.Test == "" && isFinal(e.Output):
		p.final = e.Output
	case e.Action == "output":
		p.lines = append(p.lines, line{e.Test, e.Output})
		if e.Test == "" {
			break
		}
		if reason, detail, ok := skipreason.Parse(e.Output); ok {
			p.skips[e.Test] = skip{e.Package, e.Test, reason, detail}
		} else if msg, ok := logMessage(e.Output); ok && p.skips[e.Test].reason == "" {
			// Kept in case the test skips without a reason: its last
			// message is then the skip's.
			p.skips[e.Test] = skip{e.Package, e.Test, "", msg}
		}
	case e.Test != "":
		r.testDone(p, e)
	case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
		r.packageDone(p, e)
	}
}

// isFinal reports whether out is the line go test ends a package with.
func isFinal(out string) bool {
	return strings.HasPrefix(out, "ok  \t") || strings.HasPrefix(out, "FAIL\t") || strings.HasPrefix(out, "?   \t")
}

// logMessage returns the message of a t.Log line ("    file.go:12: msg").
func logMessage(out string) (string, bool) {
	s := strings.TrimSpace(out)
	file, rest, ok := strings.Cut(s, ": ")
	if !ok || !strings.Contains(file, ".go:") || strings.ContainsAny(file, " \t") {
		return "", false
	}
	return rest, true
}

func (r *report) testDone(p *pkgState, e event) {
	switch e.Action {
	case "pass":
		r.passed++
	case "skip":
		s := p.skips[e.Test]
		s.pkg, s.test = e.Package, e.Test
		if s.reason == "" {
			s.reason = skipreason.Unstated
		}
		r.skipped = append(r.skipped, s)
	case "fail":
		r.failed = append(r.failed, e.Package+" "+e.Test)
	default:
		return // run, pause, cont
	}
	delete(p.skips, e.Test)
	if strings.Contains(e.Test, "/") {
		return // a subtest's lines go with its top-level test's
	}
	// A top-level test is done: print its output and its subtests', in
	// the order they came, if it failed; forget them otherwise.
	kept := p.lines[:0]
	for _, l := range p.lines {
		if l.test != e.Test && !strings.HasPrefix(l.test, e.Test+"/") {
			kept = append(kept, l)
		} else if e.Action == "fail" {
			io.WriteString(r.w, l.text)
		}
	}
	clear(p.lines[len(kept):])
	p.lines = kept
}

func (r *report) packageDone(p *pkgState, e event) {
	r.packages++
	if e.Action == "fail" {
		// What is left: the package's own output (TestMain, a panic, a
		// timeout) and the tests it was running.
		for _, l := range p.lines {
			io.WriteString(r.w, l.text)
		}
		if p.final == "" {
			p.final = "FAIL\t" + e.Package + " (no result)\n"
		}
		r.failedPk = append(r.failedPk, e.Package)
	}
	io.WriteString(r.w, p.final)
	delete(r.pkgs, e.Package)
}

// summary prints the totals, the skips by reason and the failures, and
// reports whether the run passes: no failure, every skip's reason allowed.
func (r *report) summary() bool {
	fmt.Fprintf(r.w, "\ntests: %d passed, %d failed, %d skipped; packages: %d, %d failed\n",
		r.passed, len(r.failed), len(r.skipped), r.packages, len(r.failedPk))
	byReason := map[skipreason.Reason][]skip{}
	for _, s := range r.skipped {
		byReason[s.reason] = append(byReason[s.reason], s)
	}
	fmt.Fprintf(r.w, "skipped: %d tests", len(r.skipped))
	if len(r.skipped) > 0 {
		fmt.Fprint(r.w, "; by reason:")
	}
	fmt.Fprintln(r.w)
	disallowed := 0
	for _, reason := range slices.Sorted(maps.Keys(byReason)) {
		skips := byReason[reason]
		verdict := "allowed"
		if !r.allowed[reason] {
			verdict = "NOT ALLOWED: not in " + r.allowPath
			disallowed += len(skips)
		}
		fmt.Fprintf(r.w, "  %s (%s): %d\n", reason, verdict, len(skips))
		for _, s := range skips {
			fmt.Fprintf(r.w, "      %s %s: %s\n", s.pkg, s.test, s.detail)
		}
	}
	for _, f := range r.failed {
		fmt.Fprintf(r.w, "failed: %s\n", f)
	}
	for _, f := range r.failedPk {
		fmt.Fprintf(r.w, "failed package: %s\n", f)
	}
	var problems []string
	if len(r.failed) > 0 {
		problems = append(problems, fmt.Sprintf("%d tests failed", len(r.failed)))
	}
	if len(r.failedPk) > 0 {
		problems = append(problems, fmt.Sprintf("%d packages failed", len(r.failedPk)))
	}
	if disallowed > 0 {
		problems = append(problems, fmt.Sprintf("%d skipped for a reason not in %s", disallowed, r.allowPath))
	}
	if r.packages == 0 {
		problems = append(problems, "no package tested")
	}
	if len(problems) > 0 {
		fmt.Fprintf(r.w, "FAIL: %s\n", strings.Join(problems, "; "))
		return false
	}
	fmt.Fprintln(r.w, "PASS")
	return true
}
