// Package testutil holds helpers that the tests of several sluice packages
// share: an in-process registry, NBD clients (nbdinfo, fio's nbd engine)
// with their output decoded, and Require, the one way a test states what
// it needs (root, tools, devices), failing with what is missing.
//
// It is for tests only: no non-test code may import it. It is not under
// test/internal, so that the unit tests of imageconv, blockcache, nbdserver
// and cmd can use it as well as the end-to-end tests under test/.
package testutil
