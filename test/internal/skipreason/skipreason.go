// Package skipreason is the format in which a test states why it skips,
// shared by test/testutil, which writes it (SkipBecause), and
// test/internal/testreport, which reads it from `go test -json` to sum
// skips up by reason and refuse those not on the allow-list (test/skips.allow).
//
// A reason is a short lower-case word such as "no-kernel-nbd". A skip
// message reads "skip[REASON]: what is left out and why"; a skip without
// it has no stated reason, and no allow-list lets that pass.
package skipreason

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// A Reason names why a test was skipped.
type Reason string

const (
	// NoKernelNBD: the test needs the kernel's nbd driver, which this
	// machine kind's kernel lacks (not built in, modules cannot be
	// loaded); it runs inside the test VM.
	NoKernelNBD Reason = "no-kernel-nbd"
	// Short: `go test -short` asked to leave slow tests out.
	Short Reason = "short"
	// Unstated is what the report calls a skip that gave no reason.
	Unstated Reason = "unstated"
)

var validReason = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

// Valid reports whether r has the form of a reason: lower-case words
// joined by "-".
func (r Reason) Valid() bool { return validReason.MatchString(string(r)) }

// Format is the skip message stating reason r, then detail.
func Format(r Reason, detail string) string {
	return fmt.Sprintf("skip[%s]: %s", r, detail)
}

// logLine is a line of test output as t.Skip writes it, after the
// testing package's indent and "file.go:LINE: " prefix.
var logLine = regexp.MustCompile(`^\s*[^\s:]+\.go:\d+: skip\[([a-z0-9-]+)\]: (.*)$`)

// Parse finds the reason and detail in one line of test output as the
// testing package prints a message of Format; ok is false for any other
// line.
func Parse(line string) (r Reason, detail string, ok bool) {
	m := logLine.FindStringSubmatch(strings.TrimRight(line, "\n"))
	if m == nil {
		return "", "", false
	}
	return Reason(m[1]), m[2], true
}

// ReadAllowList reads an allow-list: one reason per line, "#" starts a
// comment, blank lines are ignored. Each reason must be valid, appear
// once and not be Unstated.
func ReadAllowList(r io.Reader) (map[Reason]bool, error) {
	allowed := map[Reason]bool{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		switch r := Reason(line); {
		case !r.Valid():
			return nil, fmt.Errorf("line %d: %q is not a reason (lower-case words joined by -)", n, line)
		case r == Unstated:
			return nil, fmt.Errorf("line %d: a skip must state its reason; %q cannot be allowed", n, line)
		case allowed[r]:
			return nil, fmt.Errorf("line %d: %q listed twice", n, line)
		default:
			allowed[r] = true
		}
	}
	return allowed, sc.Err()
}
