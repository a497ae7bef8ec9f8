//go:build race

package serve

// raceBuild: under go test -race the sluice binary is built with -race too,
// so data races in the server under real clients fail the tests.
const raceBuild = true
