// Package qemuvm boots Debian's kernel under QEMU's software emulation
// (TCG) for tests that need a kernel feature the host lacks, such as the
// nbd driver: it finds the kernel and QEMU (a test lacking them fails,
// naming the package to install), builds initramfs images (newc cpio
// archives: busybox, kernel modules, dynamically linked tools with their
// libraries, and the tests' static binaries), caches what is slow to build
// outside the repository, keyed by a hash of its inputs (Debian root
// filesystems built with debootstrap among them), boots a guest with a
// deadline and collects what it wrote on its second serial port, and
// parses the go test -v output found there.
//
// A guest boots from its initramfs, or switches into a root filesystem
// disk with systemd as init (SystemdInit, SystemdRunScript): then its tests
// run as a service once multi-user.target is reached, and the boot ends
// with a poweroff or a reboot through systemd. Such a disk is an Overlay
// (qcow2, copy-on-write) of the cached image, so that a test can boot the
// same disk again, as after a reboot, without the cache seeing its writes.
//
// A guest has no network card: its tests talk over its loopback and unix
// sockets only.
package qemuvm
