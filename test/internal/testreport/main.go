// Command testreport reads the `go test -json` stream of `make test` on
// stdin and writes what plain `go test` would: one "ok" line per passing
// package, the whole output of each failing test, build errors. At the end
// it sums the tests up and lists the skipped ones by reason (see
// test/internal/skipreason). It exits 1 if a test or package failed, or if
// a skip's reason is not on the allow-list.
//
//	go test -json ./... | testreport -allow test/skips.allow
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/sluice-project/sluice/test/internal/skipreason"
)

func main() {
	allowPath := flag.String("allow", "test/skips.allow", "the allow-list of skip reasons")
	flag.Parse()
	f, err := os.Open(*allowPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	allowed, err := skipreason.ReadAllowList(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testreport: %s: %v\n", *allowPath, err)
		os.Exit(2)
	}
	r := newReport(os.Stdout, allowed, *allowPath)
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport: reading the test stream:", err)
		os.Exit(2)
	}
	if !r.summary() {
		os.Exit(1)
	}
}
