// Package vm runs the tests that need the kernel nbd driver, which the
// hosts this project's tests run on do not have, in QEMU guests booting
// Debian's kernel under software emulation (test/internal/qemuvm):
//
//   - TestKernelNBD boots a small initramfs (busybox, the nbd, loop,
//     overlay and ext4 modules, mke2fs) with static test binaries of
//     snapshot (its TestKernel* tests: the attacher suite and the kernel
//     attacher's own tests) and test/vm/guest (read path, restart,
//     agent gone too long, multi-connection), and the sluiced binary.
//
// The base archive is built once and cached under
// /var/cache/sluice-test/vm (SLUICE_VM_CACHE), named by a hash of its
// inputs; the binaries, which change with every commit, go in a second
// archive appended for each run. Every test a guest ran becomes a subtest
// here, with its output; figures the guest tests report (REPORT lines) are
// logged and written to the cache directory's last-report.txt.
//
// QEMU (qemu-system-x86) and the kernel (linux-image-amd64) are installed
// by scripts/install-deps.sh; without them the tests fail, naming what is
// missing.
package vm
