// Package convertsvc holds the end-to-end acceptance tests of the
// conversion service, `sluice convert-service` (package
// imageconv/service), with real parts: Debian's docker-registry sending
// its push notifications to the service (the snippet shipped in
// scripts/convert-service), skopeo pushing images, `sluice inspect --key`
// finding what the service pushed and signed, and nodes of sluiced and a
// private containerd whose CRI pulls stream an image once it is converted
// (trust policy "signed", the service's key).
//
// One shared service (with its key, state and work dir), a registry that
// notifies it and one that does not serve the tests that do not kill it;
// the crash test runs a service of its own behind a proxy that holds the
// request the test wants the service killed in. Every test reads the
// shared service's counters before and after what it does, so order
// matters nowhere.
//
// Root, containerd, runc, crictl, skopeo, docker-registry and the
// portable attacher's tools are needed; scripts/install-deps.sh (make
// test) installs them all, and a test lacking one fails, naming it.
package convertsvc
