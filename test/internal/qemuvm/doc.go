// Package qemuvm boots Debian's kernel under QEMU's software emulation
// (TCG) for tests that need a kernel feature the host lacks, such as the
// nbd driver: it finds the kernel and QEMU (a test lacking them fails,
// naming the package to install), builds initramfs images (newc cpio
// archives: busybox, kernel modules, dynamically linked tools with their
// libraries, and the tests' static binaries), caches what is slow to build
// outside the repository, keyed by a hash of its inputs, boots a guest
// with a deadline and collects what it wrote on its second serial port,
// and parses the go test -v output found there.
//
// A guest has no network card: its tests talk over its loopback and unix
// sockets only.
package qemuvm
