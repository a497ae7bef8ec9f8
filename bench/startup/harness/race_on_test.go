//go:build race

package harness

// raceBuild: under go test -race, sluiced and sluice are built with -race
// too (as test/agent builds them, so the build cache is shared).
const raceBuild = true
