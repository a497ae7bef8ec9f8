#!/usr/bin/env bash
# demo.sh: show sluice end to end on one machine, without internet.
# Run through `make demo` (which installs dependencies and builds bin/ first).
#
# Stages:
#   1. start Debian's docker-registry on 127.0.0.1 (temp dir storage)
#   2. build a small busybox image (busybox-static + umoci) and push it
#   3. sluice convert: flatten it to ext4 and push the streamable artifact
#   4. sluice inspect: show the artifact found for the image
#   5. sluice export: reassemble the ext4 image, e2fsck it, read a file back
#   6. (later) containerd + sluiced + a lazily started container
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

sluice="${SLUICE:-$repo_root/bin/sluice}"
[[ -x "$sluice" ]] || die "$sluice not found: run 'make build' (or 'make demo')"
for cmd in docker-registry skopeo umoci busybox jq curl e2fsck debugfs; do
	command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/install-deps.sh"
done

tmp="$(mktemp -d /tmp/sluice-demo.XXXXXX)"
cleanup() {
	local rc=$?
	registry_stop
	rm -rf "$tmp"
	((rc == 0)) || echo "demo FAILED (exit $rc)" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. registry -------------------------------------------------------------
registry_start "$tmp/registry"
log "registry: docker-registry on $REGISTRY_ADDR (pid $REGISTRY_PID, storage $REGISTRY_STORAGE)"
image="$REGISTRY_ADDR/demo/busybox:latest"

# --- 2. sample image ---------------------------------------------------------
log "building a busybox image with umoci"
oci_busybox "$tmp/oci" latest
skopeo copy -q --dest-tls-verify=false "oci:$tmp/oci:latest" "docker://$image"
src_json="$(skopeo inspect --tls-verify=false "docker://$image")"
src_digest="$(jq -r .Digest <<<"$src_json")"
src_layers="$(jq -r '.Layers | length' <<<"$src_json")"
log "pushed $image ($src_digest, $src_layers layer(s))"

# --- 3. convert --------------------------------------------------------------
log "sluice convert --plain-http $image"
start_ns="$(date +%s%N)"
"$sluice" convert --plain-http "$image" | tee "$tmp/convert.out" || die "sluice convert failed"
convert_ms=$((($(date +%s%N) - start_ns) / 1000000))

# --- 4. inspect --------------------------------------------------------------
log "sluice inspect --plain-http $image"
"$sluice" inspect --plain-http "$image" | tee "$tmp/inspect.out" || die "sluice inspect failed"

# --- 5. export and check -----------------------------------------------------
log "sluice export --plain-http $image demo.ext4"
"$sluice" export --plain-http "$image" "$tmp/demo.ext4" || die "sluice export failed"
e2fsck -fn "$tmp/demo.ext4" >"$tmp/fsck.out" 2>&1 || {
	cat "$tmp/fsck.out" >&2
	die "e2fsck found problems in the exported ext4 image"
}
motd="$(debugfs -R 'cat /etc/motd' "$tmp/demo.ext4" 2>/dev/null)"
[[ "$motd" == "hello from a sluice demo image" ]] ||
	die "exported image: /etc/motd reads '$motd'"
log "exported ext4 passes e2fsck -fn; /etc/motd: $motd"

# --- 6. lazy container start (not yet) -----------------------------------------
# Later issues add here: start containerd with a private config whose
# proxy_plugins."sluice" points at sluiced's socket (start sluiced first:
# containerd backs off for seconds if the socket is not there), pull $image through CRI / the project's pull client
# with snapshotter "sluice", run a container, and print how many bytes were
# fetched before it started versus the image size.
demo_lazy_start() {
	log "lazy container start: not implemented yet (containerd + sluiced come in later issues)"
}
demo_lazy_start

# --- summary -----------------------------------------------------------------
# convert prints REPO@DIGEST of the artifact first.
artifact_digest="$(grep -Eo '@sha256:[0-9a-f]{64}' "$tmp/convert.out" | head -n1 | cut -c2- || true)"
echo
echo "== sluice demo summary =="
printf '  %-18s %s\n' "registry" "$REGISTRY_ADDR (docker-registry $(docker-registry --version | awk '{print $3}'))"
printf '  %-18s %s\n' "source image" "$image"
printf '  %-18s %s\n' "source manifest" "$src_digest"
printf '  %-18s %s\n' "artifact" "${artifact_digest:-(see convert output above)}"
printf '  %-18s %s ms\n' "convert wall time" "$convert_ms"
printf '  %-18s %s\n' "export" "e2fsck clean, contents match"
printf '  %-18s %s\n' "lazy start" "not yet"
echo "demo OK"
