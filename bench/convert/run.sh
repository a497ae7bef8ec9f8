#!/usr/bin/env bash
# bench/convert/run.sh: how fast and how lean is `sluice convert` compared with
# the same flattening done by standard tools, and how many chunks does an
# image share with its base?
#
# Inputs (built once, cached under $SLUICE_BENCH_CACHE):
#   base  one layer: debootstrap --variant=minbase --include=python3,... bookworm
#         (about 300 MB uncompressed; see INCLUDE), fetched from the machine's own Debian
#         mirror as configured in /etc/apt/sources.list*
#   app   base + one small app layer (a few MB: files under /app, one
#         modified file in /etc, one whiteout)
# Both are pushed to a fresh local docker-registry on 127.0.0.1.
#
# Measured in one run, REPEAT times each, interleaved; medians reported (and
# the best-of ratio, since other load on the machine only adds time):
#   sluice  `sluice convert --plain-http IMAGE` of base: wall time, peak RSS
#           (GNU time "Maximum resident set size"). Includes fetching the
#           layer from the local registry and pushing the artifact.
#   floor   standard tools on the same layer, fetch not included (the blob is
#           read from the registry's storage): tar -xzf into a dir, then
#           mke2fs -t ext4 -d DIR -b 4096 with a size from du + slack.
# and once: convert of app, and the share of app's chunks already in base
# (needs `sluice inspect --chunks`).
#
# Targets: sluice/floor wall time <= 1.0, sluice peak RSS <= 256 MiB.
# Results: printed and written to bench/convert/results/latest.txt.
#
# Usage: bench/convert/run.sh [--prepare]
#   --prepare   only build (and cache) the input images; no sluice needed
#
# Environment:
#   REPEAT=3                 runs of each measured command
#   CHUNK_SIZE=              passed to convert as --chunk-size when set
#   SLUICE=bin/sluice        the binary under test
#   SLUICE_BENCH_CACHE=/var/cache/sluice-bench
#   SLUICE_BENCH_MIRROR=     Debian mirror URL (default: from apt sources)
#   BENCH_STRICT=0           1: exit 1 when a target is missed
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

REPEAT="${REPEAT:-3}"
CHUNK_SIZE="${CHUNK_SIZE:-}"
SLUICE="${SLUICE:-$repo_root/bin/sluice}"
CACHE="${SLUICE_BENCH_CACHE:-/var/cache/sluice-bench}"
BENCH_STRICT="${BENCH_STRICT:-0}"
SUITE=bookworm
# python3 alone gives only ~155 MiB; pip, numpy and git bring a typical
# Python application base to ~300 MiB.
INCLUDE=python3,python3-pip,python3-venv,python3-numpy,git,ca-certificates,openssl
# The cache dir name hashes SUITE and INCLUDE and the build recipe's version
# (scripts/lib.sh: bench_base_dir), so stale inputs are never reused.
TARGET_TIME_RATIO=1.0
TARGET_RSS_MIB=256

results_dir="$here/results"
results="$results_dir/latest.txt"

prepare_only=0
case "${1:-}" in
--prepare) prepare_only=1 ;;
"") ;;
*) die "usage: $0 [--prepare]" ;;
esac

((prepare_only)) || [[ -x "$SLUICE" ]] || die "$SLUICE not found: run 'make build' (or 'make bench')"
[[ "$(id -u)" == 0 ]] || die "run as root (debootstrap, device nodes in the rootfs, tar -x with owners)"
for cmd in debootstrap umoci skopeo docker-registry mke2fs tar gzip jq curl du; do
	command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/install-deps.sh"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) not found: run scripts/install-deps.sh"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"

cache_dir="$(bench_base_dir "$CACHE" "$SUITE" "$INCLUDE")"
rootfs_tar="$cache_dir/base-rootfs.tar"
layout="$cache_dir/oci"
mkdir -p "$cache_dir"

# --- inputs (cached) ---------------------------------------------------------
build_rootfs_tar() { bench_rootfs_tar "$cache_dir" "$SUITE" "$INCLUDE"; }

# build_app_tar OUT: the app layer, derived from the base rootfs so it is the
# same on every machine (only model.bin is random; the image is cached).
build_app_tar() {
	local out="$1" stage="$cache_dir/app.build"
	rm -rf "$stage"
	mkdir -p "$stage/app/lib" "$stage/etc" "$stage/usr/share/doc"
	local pkgs=(email json http urllib xml asyncio logging)
	local p
	for p in "${pkgs[@]}"; do
		tar -xf "$rootfs_tar" -C "$stage/app/lib" --strip-components=3 "usr/lib/python3.11/$p"
	done
	head -c $((2 * 1024 * 1024)) /dev/urandom >"$stage/app/model.bin"
	cat >"$stage/app/main.py" <<'EOF'
import json, sys
print(json.dumps({"app": "sluice-bench", "python": sys.version.split()[0]}))
EOF
	tar -xf "$rootfs_tar" -C "$stage" etc/debian_version
	echo "sluice-bench app layer" >>"$stage/etc/debian_version"
	: >"$stage/usr/share/doc/.wh.python3"
	tar --sort=name --numeric-owner --format=pax --pax-option=delete=atime,delete=ctime \
		-C "$stage" -cf "$out" app etc usr
	rm -rf "$stage"
}

build_layout() {
	[[ -f "$layout/index.json" ]] && return
	build_rootfs_tar
	log "packing OCI images base and app (once; cached in $layout)"
	local tmp="$layout.build" t0=$SECONDS
	rm -rf "$tmp"
	umoci init --layout "$tmp"
	umoci new --image "$tmp:base"
	umoci raw add-layer --image "$tmp:base" \
		--history.created_by "debootstrap --variant=minbase --include=$INCLUDE $SUITE" "$rootfs_tar"
	umoci config --image "$tmp:base" --os linux --architecture "$(dpkg --print-architecture)" \
		--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--config.cmd /bin/bash --no-history
	build_app_tar "$cache_dir/app.tar"
	umoci raw add-layer --image "$tmp:base" --tag app \
		--history.created_by "COPY app /app" "$cache_dir/app.tar"
	umoci config --image "$tmp:app" --config.workingdir /app \
		--config.cmd python3 --config.cmd /app/main.py --no-history
	umoci gc --layout "$tmp"
	rm -f "$cache_dir/app.tar"
	mv "$tmp" "$layout"
	log "images packed in $((SECONDS - t0)) s"
}

build_layout
if ((prepare_only)); then
	log "inputs ready in $layout"
	exit 0
fi

# --- registry ----------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
cleanup() {
	local rc=$?
	registry_stop
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

registry_start "$work/registry"
log "registry on $REGISTRY_ADDR (pid $REGISTRY_PID)"
base_ref="$REGISTRY_ADDR/bench/base:latest"
app_ref="$REGISTRY_ADDR/bench/app:latest"
skopeo copy -q --dest-tls-verify=false "oci:$layout:base" "docker://$base_ref"
skopeo copy -q --dest-tls-verify=false "oci:$layout:app" "docker://$app_ref"

# Layer blobs of base, straight from the registry's storage (fetch untimed).
base_manifest="$(skopeo inspect --raw --tls-verify=false "docker://$base_ref")"
mapfile -t base_layers < <(jq -r '.layers[].digest' <<<"$base_manifest")
layer_files=()
layer_bytes=0
for d in "${base_layers[@]}"; do
	hex="${d#sha256:}"
	f="$REGISTRY_STORAGE/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
	[[ -f "$f" ]] || die "layer blob $d not in registry storage at $f"
	layer_files+=("$f")
	layer_bytes=$((layer_bytes + $(stat -c %s "$f")))
done
rootfs_bytes="$(stat -c %s "$rootfs_tar")"
rootfs_files="$(tar -tf "$rootfs_tar" | wc -l)"
log "base: ${#base_layers[@]} layer, $((layer_bytes / 1048576)) MiB gzip, $((rootfs_bytes / 1048576)) MiB tar, $rootfs_files entries"

# The floor: standard tools, one shell script timed as a whole.
cat >"$work/floor.sh" <<'EOF'
#!/bin/bash
# floor.sh OUTDIR LAYER.tar.gz...: extract the layers, build an ext4 image.
set -euo pipefail
out="$1"
shift
mkdir -p "$out/rootfs"
for layer in "$@"; do
	tar --numeric-owner --xattrs --xattrs-include='*' -xzf "$layer" -C "$out/rootfs"
done
kib="$(du -sk "$out/rootfs" | cut -f1)"
inodes="$(du -s --inodes "$out/rootfs" | cut -f1)"
# slack: 20% + 64 MiB for metadata and journal; inodes: 25% + 1024 spare
mke2fs -q -t ext4 -d "$out/rootfs" -b 4096 -N $((inodes + inodes / 4 + 1024)) \
	"$out/floor.ext4" "$((kib + kib / 5 + 65536))k"
EOF
chmod +x "$work/floor.sh"

convert_flags=(--plain-http)
[[ -n "$CHUNK_SIZE" ]] && convert_flags+=(--chunk-size "$CHUNK_SIZE")

# timed NAME CMD...: run CMD under GNU time; append "wall_s rss_kib" to
# $work/NAME.runs; keep its stdout+stderr in $work/NAME.out.
timed() {
	local name="$1" t0 t1 rss
	shift
	sync # write back the previous run's output now, not during this one
	t0="$(date +%s%N)"
	if ! /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out" 2>&1; then
		cat "$work/$name.out" >&2
		die "$name failed: $*"
	fi
	t1="$(date +%s%N)"
	rss="$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")"
	echo "$(awk -v ns=$((t1 - t0)) 'BEGIN {printf "%.3f", ns / 1e9}') $rss" >>"$work/$name.runs"
}

# median FILE COLUMN
median() {
	sort -g -k"$2","$2" "$1" | awk -v c="$2" '{v[NR] = $c} END {
		if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

log "measuring: $REPEAT x (sluice convert base, floor), interleaved"
for ((i = 1; i <= REPEAT; i++)); do
	timed sluice "$SLUICE" convert "${convert_flags[@]}" "$base_ref"
	rm -rf "$work/floor"
	timed floor "$work/floor.sh" "$work/floor" "${layer_files[@]}"
	echo "  run $i: sluice $(tail -n1 "$work/sluice.runs" | awk '{printf "%s s %d MiB", $1, $2 / 1024}')," \
		"floor $(tail -n1 "$work/floor.runs" | awk '{printf "%s s %d MiB", $1, $2 / 1024}')"
done
floor_img_bytes="$(stat -c %s "$work/floor/floor.ext4")"
floor_img_used="$(du -B1 "$work/floor/floor.ext4" | cut -f1)"
rm -rf "$work/floor"
cp "$work/sluice.out" "$work/sluice-base.out"

log "converting app once"
timed app "$SLUICE" convert "${convert_flags[@]}" "$app_ref"

sluice_s="$(median "$work/sluice.runs" 1)"
sluice_rss_kib="$(median "$work/sluice.runs" 2)"
floor_s="$(median "$work/floor.runs" 1)"
floor_rss_kib="$(median "$work/floor.runs" 2)"
app_s="$(awk '{print $1}' "$work/app.runs")"
app_rss_kib="$(awk '{print $2}' "$work/app.runs")"
ratio="$(awk -v a="$sluice_s" -v b="$floor_s" 'BEGIN {printf "%.2f", a / b}')"
# Best-of ratio: noise from other load only ever adds time, so the fastest
# runs are the least disturbed.
best_ratio="$(awk 'NR == FNR {if (a == "" || $1 < a) a = $1; next} {if (b == "" || $1 < b) b = $1}
	END {printf "%.2f (%.3f / %.3f s)", a / b, a, b}' "$work/sluice.runs" "$work/floor.runs")"
sluice_rss_mib="$(awk -v k="$sluice_rss_kib" 'BEGIN {printf "%.1f", k / 1024}')"
floor_rss_mib="$(awk -v k="$floor_rss_kib" 'BEGIN {printf "%.1f", k / 1024}')"
app_rss_mib="$(awk -v k="$app_rss_kib" 'BEGIN {printf "%.1f", k / 1024}')"
# The time target must hold for both the median and the best-of ratio: noise
# can flatter either one.
time_ok="$(awk -v r="$ratio" -v b="${best_ratio%% *}" -v t="$TARGET_TIME_RATIO" 'BEGIN {print (r <= t && b <= t) ? "PASS" : "MISS"}')"
rss_ok="$(awk -v r="$sluice_rss_mib" -v t="$TARGET_RSS_MIB" 'BEGIN {print (r <= t) ? "PASS" : "MISS"}')"

# Shared chunks: the share of app's chunks (and stored bytes) that base has.
chunks_line="TODO: sluice inspect has no --chunks flag yet (needs one line per chunk: INDEX DIGEST STORED_LEN)"
if "$SLUICE" inspect --help 2>&1 | grep -q -- '--chunks'; then
	# (mawk has no {n} intervals, hence the length test)
	parse_chunks() { awk '$1 ~ /^[0-9]+$/ && $2 ~ /^sha256:[0-9a-f]+$/ && length($2) == 71 && $3 ~ /^[0-9]+$/ {print $2, $3}'; }
	"$SLUICE" inspect --plain-http --chunks "$base_ref" 2>"$work/chunks.err" | parse_chunks >"$work/base.chunks" ||
		die "sluice inspect --chunks $base_ref failed: $(cat "$work/chunks.err")"
	"$SLUICE" inspect --plain-http --chunks "$app_ref" 2>"$work/chunks.err" | parse_chunks >"$work/app.chunks" ||
		die "sluice inspect --chunks $app_ref failed: $(cat "$work/chunks.err")"
	[[ -s "$work/base.chunks" && -s "$work/app.chunks" ]] ||
		die "sluice inspect --chunks printed no 'INDEX DIGEST STORED_LEN' lines"
	chunks_line="$(awk 'NR == FNR {base[$1] = 1; bn++; bb += $2; next}
		{n++; b += $2; if ($1 in base) {s++; sb += $2}}
		END {printf "%.1f%% of app chunks (%d of %d), %.1f%% of app stored bytes (%.1f of %.1f MiB) are in base (base: %d chunks, %.1f MiB stored)",
			100 * s / n, s, n, 100 * sb / b, sb / 1048576, b / 1048576, bn, bb / 1048576}' \
		"$work/base.chunks" "$work/app.chunks")"
fi

artifact="$(grep -Eo '@sha256:[0-9a-f]{64}' "$work/sluice-base.out" | head -n1 | cut -c2- || true)"
git_rev="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo none)"
git_dirty=""
if git -C "$repo_root" status --porcelain 2>/dev/null | grep -q .; then git_dirty=" (dirty)"; fi

mkdir -p "$results_dir"
{
	echo "sluice convert benchmark"
	echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit:      $git_rev$git_dirty"
	echo "machine:     $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -r), $(go version 2>/dev/null | awk '{print $3}')"
	echo "chunk size:  ${CHUNK_SIZE:-default}"
	echo "repeats:     $REPEAT (median reported)"
	echo "base image:  debootstrap minbase+$INCLUDE $SUITE: $((rootfs_bytes / 1048576)) MiB tar, $rootfs_files entries, $((layer_bytes / 1048576)) MiB gzip, ${#base_layers[@]} layer"
	echo "artifact:    ${artifact:-?} (from convert output)"
	echo "floor image: $((floor_img_bytes / 1048576)) MiB ext4 ($((floor_img_used / 1048576)) MiB allocated)"
	echo
	printf '%-34s %10s %14s\n' "" "wall s" "peak RSS MiB"
	printf '%-34s %10s %14s\n' "sluice convert (base)" "$sluice_s" "$sluice_rss_mib"
	printf '%-34s %10s %14s\n' "floor: tar -xzf + mke2fs -d (base)" "$floor_s" "$floor_rss_mib"
	printf '%-34s %10s %14s\n' "sluice convert (app, once)" "$app_s" "$app_rss_mib"
	echo
	echo "runs (wall s, RSS KiB):"
	paste -d' ' <(sed 's/^/  sluice /' "$work/sluice.runs") <(sed 's/^/| floor /' "$work/floor.runs")
	echo
	echo "time ratio sluice/floor: ${ratio}x median, ${best_ratio%% *}x best-of ${best_ratio#* }   target <= ${TARGET_TIME_RATIO}x (both)   $time_ok"
	echo "sluice peak RSS:         ${sluice_rss_mib} MiB   target <= ${TARGET_RSS_MIB} MiB   $rss_ok"
	echo "shared chunks app/base:  $chunks_line"
} >"$results.tmp"
mv "$results.tmp" "$results"
echo
cat "$results"
echo
echo "(written to ${results#"$repo_root"/})"

if [[ "$BENCH_STRICT" == 1 && ("$time_ok" != PASS || "$rss_ok" != PASS) ]]; then
	exit 1
fi
