#!/usr/bin/env bash
# demo.sh: show that sluice starts a container before its image is
# downloaded, on one machine, without internet. Run it through `make demo`
# (which installs the dependencies first), as root.
#
# What it does (bench/startup/demo over the bench/startup harness):
#   1. builds the demo image once and caches it (under $SLUICE_BENCH_CACHE,
#      default /var/cache/sluice-bench, in startup/): python3 from
#      `debootstrap --variant=minbase` (Debian's mirror) plus an app layer
#      with /app/app.py and $SLUICE_DEMO_DATA_MIB (300) MiB of assets the
#      app never reads (pseudo-random, incompressible, generated locally)
#   2. pushes it to Debian's docker-registry on 127.0.0.1 and runs
#      `sluice convert` on it (the streamable artifact next to the image)
#   3. puts bench/fio/throttleproxy in front of the registry: the link,
#      $SLUICE_DEMO_BANDWIDTH (100M bit/s) with $SLUICE_DEMO_RTT (20ms) per
#      request
#   4. starts the app through CRI on a new private containerd (1.6): once
#      with a full pull (containerd's overlayfs), once lazily through
#      sluiced, each on an empty node with the page cache dropped
#   5. prints time to the app's first output line, bytes and requests
#      through the link, for each, and the speedup
#
# Flags are passed on: scripts/demo.sh -bandwidth 1G -rtt 2ms -data-mib 500
# (-help lists them).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

[[ "$(id -u)" == 0 ]] || die "must run as root (containerd, mounts, loop devices, dropping the page cache)"
for cmd in go docker-registry containerd ctr runc containerd-shim-runc-v2 nbdfuse fusermount3 losetup busybox debootstrap tar sha256sum; do
	command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/install-deps.sh (make deps)"
done
[[ -e /dev/fuse ]] || die "/dev/fuse not found: sluiced's portable attach needs FUSE"

tmp="$(mktemp -d /tmp/sluice-demo.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
log "building the demo (go build ./bench/startup/demo)"
go build -o "$tmp/demo" ./bench/startup/demo
"$tmp/demo" "$@"
