// Package harness measures pod start time through CRI on a private node:
// how long from the image pull to the container's ready line, for each
// image, each way of getting the image (a mode), each containerd version
// and each link the registry is reached through.
//
// Terms:
//   - mode: "full" is containerd's overlayfs snapshotter with an ordinary
//     full pull (the baseline); "lazy" is sluiced (proxy snapshotter) with
//     its default config, streaming the image's sluice artifact; "profile"
//     is sluiced replaying the image's prefetch profile, which waits on
//     issue 16 (the report says so instead of measuring it).
//   - link: the registry (Debian's docker-registry) is reached through
//     bench/fio/throttleproxy, which adds a round-trip time per request and
//     caps the bandwidth of every response body together.
//   - cold run: one sample on a new node (new sluiced chunk cache, new
//     containerd content store and snapshots) after the page cache is
//     dropped. The pod sandbox runs first (its image is local); the clock
//     starts at PullImage and stops at the time containerd stamped on the
//     container's ready line in its CRI log.
//   - before ready: the requests and response bytes the proxy served from
//     the start of the pull to the ready line; total: the same once
//     sluiced's background fetch has brought the whole image in (for a full
//     pull, the same as before ready).
//
// Run drives the whole matrix and returns a Report; Markdown writes it.
// Demo runs one point of it for `make demo` and prints a small table.
// Images are built from Debian packages (busybox-static; debootstrap from
// the machine's Debian mirror through scripts/lib.sh, as bench/convert
// does) and cached, keyed by their inputs, outside the repository.
package harness
