// Package agent holds the end-to-end acceptance tests of the node agent
// sluiced: a real registry (Debian's docker-registry, with its access log),
// a private containerd with its CRI plugin set up as on a node
// (snapshotter = "sluice", a proxy plugin served by sluiced), crictl, ctr
// and `sluice pull`, and images built and converted here without internet.
// The tests of the main paths (CRI and `sluice pull` streaming, fallback,
// refusal, shared base layers, cleanup, restart, the harness itself) run
// once per containerd version,
// as subtests: Debian's 1.6 (config version 2) and 2.x built by
// scripts/install-deps.sh (config version 3, CRI pulling through the
// transfer service); the others run on 1.6.
//
// One registry and one image set serve the whole package (built, pushed and
// converted once). Every test starts its own node: sluiced (always before
// containerd, which dials a proxy snapshotter once and then backs off) and
// containerd, each with its state under a temp dir of the test's; so order
// matters nowhere across tests. A node's cleanup removes its pods and
// images, stops both daemons by PID, and then removes, and reports, any
// mount, loop device or process left below its dir.
//
// Root, containerd, runc, crictl and the portable attacher's tools are
// needed; scripts/install-deps.sh (make test) installs them all, and a test
// skips, saying why, only when the machine cannot run it.
package agent
