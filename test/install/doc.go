// Package install tests how a node is set up for sluice: the containerd
// config edits of `sluiced install-config` against real containerd
// configs loaded by the containerd they are for (Debian's 1.6 and 2.x from
// scripts/install-deps.sh), scripts/install-node.sh leaving a working node
// on this machine (no systemd: it starts the daemons itself) where a CRI
// pod starts from a converted image without downloading a layer, the
// systemd unit files it installs (checked by systemd-analyze), and the
// DaemonSet manifest (decoded into Kubernetes' API types).
//
// The whole node under systemd, with reboots, is the VM's to test.
package install
