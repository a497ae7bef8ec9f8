// Package serve holds the end-to-end tests of `sluice serve`, the lazy NBD
// server: the CLI runs as a subprocess against Debian's docker-registry,
// reached through an in-process fault-injecting proxy, and is driven by
// real NBD clients (libnbd's nbdinfo, nbdcopy, nbdsh and nbdfuse, fio's
// nbd engine, the kernel's loop and ext4 drivers).
//
// The test image is built, pushed and converted once per run; every test
// starts its own server with its own cache directory. Under go test -race
// the sluice binary is built with -race too, and a race it reports in a
// server's log fails the test. Tests that need a
// missing tool skip, saying which; make test (scripts/install-deps.sh)
// installs them all.
package serve
