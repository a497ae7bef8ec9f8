// Package node holds the tests that run inside test/vm's whole-node guest:
// a Debian root filesystem (debootstrap) booted with systemd as init, with
// containerd 1.6 (Debian's package and its config as shipped), runc and
// docker-registry, whose registry serves, on the guest's loopback, the
// images pushed into its storage when the root filesystem was built. The
// guest boots its disk twice:
//
//   - TestNode (first boot): sluiced with attacher = "auto" loads the nbd
//     module itself and picks the kernel attacher (on state of its own,
//     then stopped and the module unloaded); sluice convert, then the node
//     release bundle's install-node.sh with no flags, as a node's startup
//     script runs it; systemd runs sluiced and containerd (both active,
//     sluiced ready); a CRI pod (crictl) and sluice pull + ctr run start
//     from the image streamed through /dev/nbdN (mountinfo) with no layer
//     blob downloaded; systemctl restart of sluiced, and kill -9 of it
//     (systemd restarts it), under a container reading every file cost it
//     no I/O error.
//   - TestNodeAfterReboot (the same disk booted again after the first boot
//     rebooted): the units came up by themselves, the nbd module was loaded
//     at boot by systemd-modules-load, and pods of the image pulled before
//     and of one pulled now start from /dev/nbdN, with no layer blob
//     downloaded.
//
// Outside that guest the tests skip (or fail inside another test VM),
// saying what is missing.
package node
