//go:build race

package install

// raceBuild: under go test -race, sluiced and sluice are built with -race
// too.
const raceBuild = true
