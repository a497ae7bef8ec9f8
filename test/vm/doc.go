// Package vm runs the tests that need the kernel nbd driver, which the
// hosts this project's tests run on do not have, in QEMU guests booting
// Debian's kernel under software emulation (test/internal/qemuvm):
//
//   - TestKernelNBD boots a small initramfs (busybox, the nbd, loop,
//     overlay and ext4 modules, mke2fs) with static test binaries of
//     snapshot (its TestKernel* tests: the attacher suite and the kernel
//     attacher's own tests) and test/vm/guest (read path, restart,
//     agent gone too long, multi-connection), and the sluiced binary.
//   - TestNode boots a whole node: a Debian root filesystem (debootstrap:
//     containerd 1.6, runc, docker-registry, systemd, and two images in
//     the registry's storage) with systemd as init, twice from one
//     copy-on-write disk. Its run archive holds the node release bundle
//     (scripts/bundle.sh over static sluice and sluiced), crictl and
//     test/vm/node's test binary, whose TestNode installs and exercises
//     the node in the first boot, which ends with a reboot, and whose
//     TestNodeAfterReboot checks it in the second.
//
// The base archive and the node's root filesystem are built once and
// cached under /var/cache/sluice-test/vm (SLUICE_VM_CACHE), named by a
// hash of their inputs; the binaries, which change with every commit, go
// in a second archive appended for each run. Every test a guest ran
// becomes a subtest here, with its output; figures the guest tests report
// (REPORT lines) are logged and written to the cache directory's
// last-report-NAME.txt.
//
// QEMU (qemu-system-x86, qemu-utils), the kernel (linux-image-amd64),
// debootstrap and crictl are installed by scripts/install-deps.sh; without
// them the tests fail, naming what is missing.
package vm
