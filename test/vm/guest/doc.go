// Package guest holds tests that need the kernel nbd driver: test/vm
// builds this package's test binary (static), boots Debian's kernel under
// QEMU and runs it there, as root, with SLUICE_TEST_VM=1. On a host without
// the driver (this project's CI hosts) every test skips, saying so; in the
// VM a missing driver fails them.
//
// They are the acceptance tests of kernel attach:
//
//   - TestReadPath: the kernel attacher and the project's NBD server, in
//     process: attach, ext4 -o ro, overlayfs on top, every file's sha256;
//     Detach leaves the device free (STATUS) and nothing mounted.
//   - TestRestart: sluiced (the binary, attacher "kernel") serves a
//     container's rootfs while a reader loops over every file; sluiced is
//     killed (-9, three times) and stopped (SIGTERM) mid-read and started
//     again: no read fails, every checksum is right, nothing is remounted.
//   - TestAgentGoneTooLong: past the dead-connection timeout reads fail
//     with EIO instead of hanging; the next sluiced gives new containers a
//     new device, and the dead one is detached once unused.
//   - TestMultiConn: 4 connections and 4 readers read right; the throughput
//     of 4 connections over 1 is reported (REPORT lines), not asserted.
//
// Binaries the tests run (sluiced) are found in $SLUICE_VM_BIN.
package guest
