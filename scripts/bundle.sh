#!/usr/bin/env bash
# bundle.sh: lay out the node release bundle, what a node (or the
# DaemonSet's image, at /opt/sluice) needs to run install-node.sh:
#
#   DIR/install-node.sh        DIR/node/ (unit, drop-in, module files)
#   DIR/config.sample.toml     DIR/bin/sluice, DIR/bin/sluiced
#
# Usage: scripts/bundle.sh DIR BIN_DIR
#   BIN_DIR holds the sluice and sluiced to ship (`make bundle` builds them
#   static, CGO_ENABLED=0, so that they run on any distribution's libc).
set -euo pipefail

(($# == 2)) || {
	echo "usage: $0 DIR BIN_DIR" >&2
	exit 2
}
dir="$1" bin_dir="$2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

for f in sluice sluiced; do
	[[ -x "$bin_dir/$f" ]] || {
		echo "bundle: no $bin_dir/$f" >&2
		exit 1
	}
done
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/node"
install -m 0755 "$repo/scripts/install-node.sh" "$dir/install-node.sh"
install -m 0644 "$repo/scripts/node/"* "$dir/node/"
install -m 0644 "$repo/cmd/sluiced/config.sample.toml" "$dir/config.sample.toml"
install -m 0755 "$bin_dir/sluice" "$bin_dir/sluiced" "$dir/bin/"
