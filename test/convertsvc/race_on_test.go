//go:build race

package convertsvc

// raceBuild: under go test -race, sluice and sluiced are built with -race
// too, and a data race reported in their logs fails the test.
const raceBuild = true
