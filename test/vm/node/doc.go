// Package node holds the test that runs inside test/vm's whole-node guest:
// a Debian root filesystem (debootstrap) with containerd, runc and
// docker-registry, whose registry serves, on the guest's loopback, an image
// pushed into its storage when the root filesystem was built. TestNode runs
// the flow test/agent runs on the host, with the kernel attacher chosen by
// attacher = "auto" (sluiced loads the nbd module itself): sluice convert,
// sluiced, containerd, sluice pull and ctr run; the container's lower layer
// is /dev/nbdN, the registry serves no layer blob, and kill -9 of sluiced
// under a running container costs it no I/O error.
//
// Outside that guest the test skips (or fails inside another test VM),
// saying what is missing.
package node
