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
#   6. sluiced + a private containerd: start a container of the image lazily
#      (sluice pull + ctr run --snapshotter sluice), then the same with an
#      ordinary full pull (containerd's overlayfs); print time and bytes of each
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

sluice="${SLUICE:-$repo_root/bin/sluice}"
sluiced="${SLUICED:-$repo_root/bin/sluiced}"
[[ -x "$sluice" ]] || die "$sluice not found: run 'make build' (or 'make demo')"
[[ -x "$sluiced" ]] || die "$sluiced not found: run 'make build' (or 'make demo')"
[[ "$(id -u)" == 0 ]] || die "must run as root (containerd, mounts, loop devices)"
for cmd in docker-registry skopeo umoci busybox jq curl e2fsck debugfs containerd ctr runc nbdfuse nbdkit losetup; do
	command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/install-deps.sh"
done

tmp="$(mktemp -d /tmp/sluice-demo.XXXXXX)"
SLUICED_PID=""
cleanup() {
	local rc=$?
	containerd_stop
	if [[ -n "$SLUICED_PID" ]] && kill -0 "$SLUICED_PID" 2>/dev/null; then
		kill "$SLUICED_PID" 2>/dev/null || true
		wait "$SLUICED_PID" 2>/dev/null || true
	fi
	# sluiced keeps image mounts across its restarts; the demo leaves none.
	sweep_dir "$tmp"
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
log "building a busybox image with umoci, plus a 48 MiB data file the demo container never reads"
oci_busybox "$tmp/oci" latest
umoci unpack --image "$tmp/oci:latest" "$tmp/bundle" >/dev/null
mkdir -p "$tmp/bundle/rootfs/opt"
head -c 48M /dev/urandom >"$tmp/bundle/rootfs/opt/data.bin"
umoci repack --image "$tmp/oci:latest" "$tmp/bundle" >/dev/null
rm -rf "$tmp/bundle"
umoci gc --layout "$tmp/oci"
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

# --- 6. lazy container start vs full pull -----------------------------------
# sluiced first: containerd dials a proxy snapshotter once, then backs off.
log "starting sluiced and a private containerd"
metrics_addr="127.0.0.1:$(free_port 9808)"
mkdir -p "$tmp/sluiced"
cat >"$tmp/sluiced/config.toml" <<EOF
root = "$tmp/sluiced/root"
address = "$tmp/sluiced/snapshotter.sock"
nbd_socket = "$tmp/sluiced/nbd.sock"
metrics_address = "$metrics_addr"
plain_http = ["$REGISTRY_ADDR"]
[cache]
dir = "$tmp/sluiced/cache"
# No background streaming: the bytes fetched are what the container read.
background_rate = "0"
EOF
"$sluiced" --config "$tmp/sluiced/config.toml" >"$tmp/sluiced/sluiced.log" 2>&1 &
SLUICED_PID=$!
for ((i = 0; i < 300; i++)); do
	curl -fsS -o /dev/null "http://$metrics_addr/healthz" 2>/dev/null && break
	kill -0 "$SLUICED_PID" 2>/dev/null || { cat "$tmp/sluiced/sluiced.log" >&2; die "sluiced exited during startup"; }
	sleep 0.1
done
((i < 300)) || die "sluiced not ready within 30 s"
containerd_start "$tmp/containerd" "$tmp/sluiced/snapshotter.sock"
log "sluiced (pid $SLUICED_PID, metrics on $metrics_addr), containerd (pid $CONTAINERD_PID)"

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
metric() { curl -fsS "http://$metrics_addr/metrics" | awk -v m="$1" '$1 == m { printf "%d\n", $2 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

log "lazy: sluice pull $image, then ctr run --snapshotter sluice ... cat /etc/motd"
start_ns="$(date +%s%N)"
"$sluice" pull --plain-http --address "$CONTAINERD_ADDR" --namespace demo-lazy "$image" >/dev/null ||
	die "sluice pull failed (sluiced log: $tmp/sluiced/sluiced.log)"
lazy_out="$(ctr --address "$CONTAINERD_ADDR" -n demo-lazy run --rm --snapshotter sluice "$image" "demo-lazy-$$" cat /etc/motd)" ||
	die "ctr run of the streamed image failed"
lazy_ms="$(ms_since "$start_ns")"
lazy_bytes="$(metric sluice_fetched_bytes_total)"
[[ "$lazy_out" == "hello from a sluice demo image" ]] || die "lazy container printed '$lazy_out'"
log "lazy container printed: $lazy_out"

log "full: ctr image pull (overlayfs), then ctr run ... cat /etc/motd"
start_ns="$(date +%s%N)"
ctr --address "$CONTAINERD_ADDR" -n demo-full image pull --plain-http "$image" >/dev/null || die "ctr image pull failed"
full_out="$(ctr --address "$CONTAINERD_ADDR" -n demo-full run --rm "$image" "demo-full-$$" cat /etc/motd)" ||
	die "ctr run of the pulled image failed"
full_ms="$(ms_since "$start_ns")"
full_bytes="$(skopeo inspect --raw --tls-verify=false "docker://$image" | jq '[.layers[].size] | add')"
[[ "$full_out" == "hello from a sluice demo image" ]] || die "full-pull container printed '$full_out'"

log "removing the images; containerd collects their snapshots"
ctr --address "$CONTAINERD_ADDR" -n demo-lazy images rm --sync "$image" >/dev/null
ctr --address "$CONTAINERD_ADDR" -n demo-full images rm --sync "$image" >/dev/null
left="$(awk -v d="$tmp/sluiced/" 'index($5, d) == 1' /proc/self/mountinfo | wc -l)"
log "image mounts left under sluiced: $left"

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
printf '  %-18s %6s ms, %s fetched (chunks the container read)\n' "lazy start" "$lazy_ms" "$(mib "${lazy_bytes:-0}")"
printf '  %-18s %6s ms, %s of layers downloaded\n' "full pull + start" "$full_ms" "$(mib "$full_bytes")"
echo "demo OK"
