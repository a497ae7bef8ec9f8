package qemuvm

import (
	"strconv"
	"strings"
)

// Section is the output of one Step.
type Section struct {
	Name  string
	Lines []string
	// Ended: the step finished (its END line was written); Code is its
	// exit code.
	Ended bool
	Code  int
}

// Sections splits a guest's output into its steps' sections, in order.
func Sections(output string) []*Section {
	var list []*Section
	var cur *Section
	for _, line := range strings.Split(output, "\n") {
		line = strings.TrimRight(line, "\r")
		if name, ok := strings.CutPrefix(line, "@@BEGIN "); ok {
			cur = &Section{Name: name}
			list = append(list, cur)
			continue
		}
		if rest, ok := strings.CutPrefix(line, "@@END "); ok && cur != nil {
			if name, code, ok := strings.Cut(rest, " "); ok && name == cur.Name {
				cur.Ended = true
				cur.Code, _ = strconv.Atoi(code)
				cur = nil
				continue
			}
		}
		if cur != nil {
			cur.Lines = append(cur.Lines, line)
		}
	}
	return list
}

// GoTest is the result of one top-level test in go test -v output.
type GoTest struct {
	Name string
	// Result is PASS, FAIL or SKIP; "" if the test never finished.
	Result string
	// Output is its lines, from its RUN line to its result line.
	Output []string
}

// GoTests parses go test -v output (tests run one at a time) into its
// top-level tests.
func GoTests(lines []string) []*GoTest {
	var tests []*GoTest
	var cur *GoTest
	for _, line := range lines {
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok && !strings.Contains(name, "/") {
			cur = &GoTest{Name: name}
			tests = append(tests, cur)
		}
		if cur != nil {
			cur.Output = append(cur.Output, line)
		}
		for _, r := range []string{"PASS", "FAIL", "SKIP"} {
			if rest, ok := strings.CutPrefix(line, "--- "+r+": "); ok && cur != nil {
				if name, _, _ := strings.Cut(rest, " "); name == cur.Name {
					cur.Result = r
					cur = nil
				}
			}
		}
	}
	return tests
}

// Reports returns the figures tests logged with a "REPORT " prefix.
func Reports(lines []string) []string {
	var r []string
	for _, line := range lines {
		if i := strings.Index(line, "REPORT "); i >= 0 {
			r = append(r, strings.TrimSpace(line[i+len("REPORT "):]))
		}
	}
	return r
}
