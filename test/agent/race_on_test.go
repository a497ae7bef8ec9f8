//go:build race

package agent

// raceBuild: under go test -race, sluiced and sluice are built with -race
// too, and a data race reported in sluiced's log fails the test.
const raceBuild = true
