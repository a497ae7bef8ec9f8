#!/usr/bin/env bash
# bench/fio/run.sh: how fast does `sluice serve` answer NBD reads once its
# cache is warm, compared with standard NBD servers on the same ext4 image;
# what does a cold read cost through a slow registry; and how much memory
# does serving many images take? One run measures all of it.
#
# Input: the bench/convert base image (debootstrap minbase + python3 etc.,
# ~340 MiB of files; built and cached by `bench/convert/run.sh --prepare`),
# pushed to a fresh local docker-registry once per chunk size tested
# (bench/fio-64kib, ...: one repository each, since an image's artifacts
# share its referrers) and converted with `sluice convert --chunk-size`.
# `sluice export` writes the reference ext4 file that every peer serves.
#
# Phases (PHASES="warm cold rss"):
#   warm  one `sluice serve --background-rate 1GiB` per chunk size, its cache
#         made complete by an nbdcopy of the whole export (whose sha256 must
#         match the exported file), and nbdkit (file plugin), nbd-server and
#         qemu-nbd serving the exported file (page cache warm). fio
#         ioengine=nbd jobs, RUNTIME s each: randread 4k qd1, randread 4k qd32,
#         read 1M qd8. REPEAT rounds, servers rotated within each job.
#         Twice: on the base image (many all-zero chunks, which sluice answers
#         without reading), and on an image of RANDOM_MIB of pseudo-random
#         data (no zero chunk; default chunk size only).
#         Target, each image and job: sluice (default chunk size) >= 1.0x the
#         best peer of the same round, in every round.
#   cold  throttleproxy (RTT, BANDWIDTH) in front of the registry; sluice
#         serves IMAGE named through the proxy's host, so the artifact lookup
#         and every range fetch cross it; --background-rate 0; fresh cache
#         dir and process per measurement. Per chunk size:
#         - amplification: read a random SAMPLE_FRACTION of the 4 KiB blocks
#           (seed SEED, queue depth 1); blob bytes the proxy served against
#           the floor: the stored (compressed) bytes of the distinct non-zero
#           chunks those blocks fall in. Target: <= 1.5x, every run (REPEAT
#           runs at the default chunk size, one at the others).
#         - first-byte latency: FIRST_BYTE_READS single 4 KiB reads of
#           far-apart cold chunks per process, REPEAT processes, each paired
#           with a plain HTTP GET of the same chunk through the proxy and
#           one straight from the registry (its service time), and with a
#           read of the chunk's stored bytes from the lazy peer, nbdkit's
#           curl plugin serving the data blob through the same proxy (it
#           neither decompresses nor verifies). Two origins,
#           each behind its own throttleproxy: docker-registry, and
#           memregistry (go-containerregistry's registry in-process: near-
#           zero service time; the images are converted there too).
#           Target: sluice's own share of a fault, the median over a
#           process's reads of (sluice read - plain GET of the same chunk
#           through the same proxy), <= 1 ms at the default chunk size
#           (memregistry origin), in every process; the budget RTT + chunk
#           transfer time + 1 ms is reported, not a target. 60 reads per
#           process: single differences spread over several ms (the
#           interquartile range is printed), and the median of 20 moved
#           by more than half the target from process to process. The first read
#           of each process is reported apart.
#   rss   RSS_IMAGES distinct images of RSS_IMAGE_MIB each (one file of
#         compressible pseudo-random data), all served by ONE sluice serve
#         (default background rate) and read through in parallel with
#         nbdcopy, RSS_TRIALS times (a fresh process and cache each).
#         Target: peak RSS (VmHWM) <= 128 MiB in every trial.
#
# Robust figures: a target passes only when its worst run does; the report
# gives the worst and the median of the runs, and the machine's load
# (/proc/loadavg) before each phase.
#
# Results: printed and written to bench/fio/results/latest.txt; the raw data
# (fio JSON, per-read latencies, proxy counters, logs) to
# bench/fio/results/latest-data/.
#
# Usage: bench/fio/run.sh
#
# Environment:
#   PHASES="warm cold rss"   which phases to run
#   CHUNK_SIZES="64KiB 256KiB 1MiB"  chunk sizes tested (the default is added)
#   RUNTIME=10  REPEAT=3     fio seconds per job; rounds (warm and cold)
#   RTT=5ms  BANDWIDTH=100MB the throttling proxy (MB: 10^6 bytes)
#   SAMPLE_FRACTION=0.01  SEED=1  FIRST_BYTE_READS=60
#   RSS_IMAGES=10  RSS_IMAGE_MIB=1024  RSS_TRIALS=3
#   RANDOM_MIB=256           the warm phase's image without zero chunks
#   PROFILE=0                1: CPU-profile the warm sluice servers
#   SLUICE=bin/sluice        the binary under test
#   SLUICE_BENCH_CACHE=/var/cache/sluice-bench   (bench/convert's input cache)
#   KEEP_WORK=0              1: keep the work directory
#   BENCH_STRICT=0           1: exit 1 when a target is missed
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo_root/scripts/lib.sh"

PHASES="${PHASES:-warm cold rss}"
CHUNK_SIZES="${CHUNK_SIZES:-64KiB 256KiB 1MiB}"
RUNTIME="${RUNTIME:-10}"
REPEAT="${REPEAT:-3}"
RTT="${RTT:-5ms}"
BANDWIDTH="${BANDWIDTH:-100MB}"
SAMPLE_FRACTION="${SAMPLE_FRACTION:-0.01}"
SEED="${SEED:-1}"
FIRST_BYTE_READS="${FIRST_BYTE_READS:-60}"
RSS_IMAGES="${RSS_IMAGES:-10}"
RSS_IMAGE_MIB="${RSS_IMAGE_MIB:-1024}"
RSS_TRIALS="${RSS_TRIALS:-3}"
RANDOM_MIB="${RANDOM_MIB:-256}"
PROFILE="${PROFILE:-0}"
SLUICE="${SLUICE:-$repo_root/bin/sluice}"
KEEP_WORK="${KEEP_WORK:-0}"
BENCH_STRICT="${BENCH_STRICT:-0}"

TARGET_WARM_RATIO=1.0
TARGET_AMPLIFICATION=1.5
TARGET_FIRST_BYTE_SLACK_MS=1
TARGET_OWN_SHARE_MS=1
TARGET_RSS_MIB=128

results_dir="$here/results"
results="$results_dir/latest.txt"
data_final="$results_dir/latest-data"

[[ $# == 0 ]] || die "usage: $0 (configured by environment variables; see the header)"
[[ -x "$SLUICE" ]] || die "$SLUICE not found: run 'make build' (or 'make bench')"
[[ "$(id -u)" == 0 ]] || die "run as root (the input image is built with debootstrap)"
for cmd in go fio nbdinfo nbdcopy nbdkit nbd-server qemu-nbd docker-registry skopeo umoci jq curl awk ss; do
	command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/install-deps.sh"
done
for v in RUNTIME REPEAT FIRST_BYTE_READS RSS_IMAGES RSS_IMAGE_MIB RSS_TRIALS RANDOM_MIB SEED; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
for p in $PHASES; do
	[[ "$p" =~ ^(warm|cold|rss)$ ]] || die "PHASES: unknown phase $p (warm, cold, rss)"
done
has_phase() { [[ " $PHASES " == *" $1 "* ]]; }

# The python3 with Debian's libnbd bindings (a pyenv python3 first in PATH
# does not have them).
PY=""
for py in /usr/bin/python3 python3; do
	if "$py" -c 'import nbd' 2>/dev/null; then
		PY="$py"
		break
	fi
done
[[ -n "$PY" ]] || die "no python3 with the nbd module: install python3-libnbd (scripts/install-deps.sh)"

# size_bytes 256KiB -> 262144
size_bytes() {
	local s="$1" n u
	[[ "$s" =~ ^([0-9]+)(KiB|MiB|GiB|k|m|g|)$ ]] || die "size $s: want e.g. 64KiB or 1MiB"
	n="${BASH_REMATCH[1]}" u="${BASH_REMATCH[2]}"
	case "$u" in
	KiB | k) echo $((n << 10)) ;;
	MiB | m) echo $((n << 20)) ;;
	GiB | g) echo $((n << 30)) ;;
	*) echo "$n" ;;
	esac
}
tag_of() { echo "${1,,}"; } # 64KiB -> 64kib

default_chunk="$("$SLUICE" convert --help | grep -- '--chunk-size' | grep -o 'default "[^"]*"' | cut -d'"' -f2)"
[[ -n "$default_chunk" ]] || die "cannot read the default --chunk-size from '$SLUICE convert --help'"
sizes=()
for cs in $CHUNK_SIZES; do
	size_bytes "$cs" >/dev/null
	sizes+=("$cs")
done
if [[ " ${sizes[*]} " != *" $default_chunk "* ]]; then
	sizes+=("$default_chunk")
fi
rtt_us="$(awk -v s="$RTT" 'BEGIN {
	if (s ~ /ms$/) v = substr(s, 1, length(s) - 2) * 1000
	else if (s ~ /us$|µs$/) v = substr(s, 1, length(s) - 2) + 0
	else if (s ~ /s$/) v = substr(s, 1, length(s) - 1) * 1e6
	else v = -1
	print v }')"
[[ "$rtt_us" != -1 ]] || die "RTT=$RTT: want e.g. 5ms"
bw_bytes="$(awk -v s="$BANDWIDTH" 'BEGIN {
	u = tolower(s); m = 1
	if (u ~ /mib$/) m = 1048576; else if (u ~ /mb$/) m = 1e6
	else if (u ~ /gib$/) m = 1073741824; else if (u ~ /gb$/) m = 1e9
	sub(/[a-z]+$/, "", u); printf "%.0f", u * m }')"
[[ "$bw_bytes" -gt 0 ]] || die "BANDWIDTH=$BANDWIDTH: want e.g. 100MB"

# --- processes ----------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/sluice-fio.XXXXXX")"
logs="$work/logs"
mkdir -p "$logs"
started=() # PIDs of every process this script started

# bg NAME CMD...: start CMD in the background, output in $logs/NAME.log;
# sets BG_PID.
bg() {
	local name="$1"
	shift
	"$@" </dev/null >"$logs/$name.log" 2>&1 &
	BG_PID=$!
	started+=("$BG_PID")
}

# stop PID: SIGTERM, then SIGKILL after 10 s; only PIDs this script started.
stop() {
	local pid="$1" i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? i
	for ((i = ${#started[@]} - 1; i >= 0; i--)); do
		stop "${started[i]}"
	done
	registry_stop
	if [[ "$KEEP_WORK" == 1 ]]; then
		echo "work directory kept: $work" >&2
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_nbd URI PID NAME: wait until URI answers a handshake.
wait_nbd() {
	local uri="$1" pid="$2" name="$3" i
	for ((i = 0; i < 1200; i++)); do
		if nbdinfo --size "$uri" >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$logs/$name.log" >&2
			die "$name exited before serving (log above)"
		fi
		sleep 0.1
	done
	die "$name did not serve $uri within 120 s"
}

# wait_addr FILE PID NAME: wait until the server NAME (PID) has written the
# address it listens on to FILE, and print it.
wait_addr() {
	local file="$1" pid="$2" name="$3" i
	for ((i = 0; i < 100; i++)); do
		[[ -s "$file" ]] && break
		kill -0 "$pid" 2>/dev/null || { cat "$logs/$name.log" >&2; die "$name exited"; }
		sleep 0.1
	done
	[[ -s "$file" ]] || die "$name wrote no address to $file within 10 s"
	cat "$file"
}

# median: of the numbers on stdin (one per line)
median() {
	sort -g | awk '{v[NR] = $1} END {
		if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# phase_load NAME: note the machine's load average before phase NAME.
loads=()
phase_load() {
	local l
	l="$(cut -d' ' -f1-3 /proc/loadavg)"
	loads+=("$(printf '%-22s %s' "$1:" "$l")")
	log "load before $1: $l (1, 5, 15 min)"
}

# worst_median LOW|HIGH: of the numbers on stdin, the worst (the lowest
# for LOW, the highest for HIGH) and the median, space-separated.
worst_median() {
	local v
	v="$(cat)"
	if [[ "$1" == LOW ]]; then
		printf '%s %s\n' "$(sort -g <<<"$v" | head -n1)" "$(median <<<"$v")"
	else
		printf '%s %s\n' "$(sort -g <<<"$v" | tail -n1)" "$(median <<<"$v")"
	fi
}

# sluice_serve NAME SOCKET CACHE RATE IMAGE...: a fresh cache dir; more flags
# in the array serve_flags, environment (NAME=VALUE) in serve_env.
serve_flags=()
serve_env=()
sluice_serve() {
	local name="$1" sock="$2" cache="$3" rate="$4"
	shift 4
	rm -rf "$cache"
	bg "$name" env "${serve_env[@]}" "$SLUICE" serve --plain-http "${serve_flags[@]}" --socket "$sock" --cache-dir "$cache" \
		--cache-size 64GiB --background-rate "$rate" "$@"
}

# vm_kib PID FIELD: VmHWM or VmRSS of PID, in KiB
vm_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# Raw data goes to the work dir and replaces results/latest-data at the end,
# so a run that fails (or a second run in the same tree) does not leave half
# of it there.
data="$work/data"
mkdir -p "$data"
t_start=$SECONDS

# Run a private copy: a rebuild of bin/sluice during the run (make build in a
# shared tree) must not change the binary between phases.
sluice_src="$SLUICE"
sluice_built="$(date -u -r "$SLUICE" +%Y-%m-%dT%H:%M:%SZ)"
cp "$SLUICE" "$work/sluice"
SLUICE="$work/sluice"

# --- inputs --------------------------------------------------------------------
log "preparing the input image (bench/convert/run.sh --prepare; cached)"
prep_out="$("$repo_root/bench/convert/run.sh" --prepare)" || die "bench/convert/run.sh --prepare failed"
layout="$(sed -n 's/^==> inputs ready in //p' <<<"$prep_out" | tail -n1)"
[[ -f "$layout/index.json" ]] || die "no OCI layout from bench/convert/run.sh --prepare: $prep_out"

registry_start "$work/registry"
log "registry on $REGISTRY_ADDR (pid $REGISTRY_PID)"

declare -A ref chunk_bytes artifact data_digest data_size
for cs in "${sizes[@]}"; do
	tag="$(tag_of "$cs")"
	chunk_bytes[$tag]="$(size_bytes "$cs")"
	ref[$tag]="bench/fio-$tag:latest" # registry host prepended where used
	skopeo copy -q --dest-tls-verify=false "oci:$layout:base" "docker://$REGISTRY_ADDR/${ref[$tag]}"
	log "sluice convert --chunk-size $cs"
	"$SLUICE" convert --plain-http --chunk-size "$cs" "$REGISTRY_ADDR/${ref[$tag]}" >"$data/convert-$tag.txt" 2>"$logs/convert-$tag.log" ||
		{ cat "$logs/convert-$tag.log" >&2; die "sluice convert --chunk-size $cs failed"; }
	artifact[$tag]="$(grep -Eo '@sha256:[0-9a-f]{64}' "$data/convert-$tag.txt" | head -n1 | cut -c2-)"
	[[ -n "${artifact[$tag]}" ]] || die "no artifact digest in the convert output ($data/convert-$tag.txt)"
	# The data blob, from the artifact manifest.
	curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
		"http://$REGISTRY_ADDR/v2/bench/fio-$tag/manifests/${artifact[$tag]}" >"$work/manifest-$tag.json"
	data_digest[$tag]="$(jq -r '.layers[] | select(.mediaType == "application/vnd.sluice.chunks.v1.zstd") | .digest' "$work/manifest-$tag.json")"
	data_size[$tag]="$(jq -r '.layers[] | select(.mediaType == "application/vnd.sluice.chunks.v1.zstd") | .size' "$work/manifest-$tag.json")"
	# The chunk table, from the index blob: INDEX DIGEST STORED_LEN
	# BLOB_OFFSET ("zero" and -1 for all-zero chunks). Chunks are stored in
	# the order they were written, not in index order, so offsets come from
	# the index itself.
	index_digest="$(jq -r '.layers[] | select(.mediaType == "application/vnd.sluice.index.v1") | .digest' "$work/manifest-$tag.json")"
	curl -fsS -o "$work/index-$tag.bin" "http://$REGISTRY_ADDR/v2/bench/fio-$tag/blobs/$index_digest" ||
		die "fetching the index blob $index_digest failed"
	"$PY" "$here/coldread.py" index "$work/index-$tag.bin" >"$data/chunks-$tag.txt" ||
		die "cannot parse the index blob of bench/fio-$tag"
	blob_end="$(awk '$4 >= 0 && $4 + $3 > e {e = $4 + $3} END {print e + 0}' "$data/chunks-$tag.txt")"
	[[ "$blob_end" == "${data_size[$tag]}" ]] ||
		die "chunk table ends at $blob_end, but the data blob is ${data_size[$tag]} bytes"
	# Cross-check: sluice inspect --chunks prints INDEX DIGEST STORED_LEN.
	"$SLUICE" inspect --plain-http --chunks "$REGISTRY_ADDR/${ref[$tag]}" 2>"$logs/inspect-$tag.log" |
		awk '$1 ~ /^[0-9]+$/ && ($2 == "zero" || $2 ~ /^sha256:/) && $3 ~ /^[0-9]+$/ {print $1, $2, $3}' >"$work/inspect-$tag.txt"
	cmp -s <(cut -d' ' -f1-3 "$data/chunks-$tag.txt") "$work/inspect-$tag.txt" ||
		die "sluice inspect --chunks and the index blob of bench/fio-$tag disagree"
done
dtag="$(tag_of "$default_chunk")"

ext4="$work/ref.ext4"
log "sluice export (the ext4 file every peer serves)"
"$SLUICE" export --plain-http "$REGISTRY_ADDR/${ref[$dtag]}" "$ext4" >/dev/null 2>"$logs/export.log" ||
	{ cat "$logs/export.log" >&2; die "sluice export failed"; }
ext4_bytes="$(stat -c %s "$ext4")"
ext4_sha="$(sha256sum "$ext4" | cut -d' ' -f1)"
nblocks=$((ext4_bytes / 4096))
log "reference ext4: $((ext4_bytes / 1048576)) MiB, $nblocks blocks, sha256 ${ext4_sha:0:12}"

# ==============================================================================
# warm cache
# ==============================================================================
declare -A warm_uri warm_pid warm_hwm
jobs=("randread 4k 1" "randread 4k 32" "read 1m 8")
job_names=("4k rand qd1" "4k rand qd32" "1M seq qd8")
job_units=("IOPS" "IOPS" "MiB/s")
peers=(nbdkit nbd-server qemu-nbd)
warm_sets=()
declare -A warm_label warm_sluice # set -> description; set -> its sluice servers

# warm_set SET LABEL EXT4 SHA TAG=REF...: one sluice serve per TAG=REF (the
# cache filled by an nbdcopy that must give the bytes of EXT4), the three
# peers serving EXT4, and REPEAT rounds of every fio job against all of
# them, rotated. Rows "SET SERVER JOB ROUND IOPS MIB/S" go to warm.tsv.
warm_set() {
	local set="$1" label="$2" ext4f="$3" sha="$4"
	shift 4
	local servers=() name tag r sock got t0 rep j s n srv out k nruns rw bs depth i tr
	warm_sets+=("$set")
	warm_label[$set]="$label"
	phase_load "warm ($set)"
	log "warm ($set): starting servers"
	for tr in "$@"; do
		tag="${tr%%=*}" r="${tr#*=}"
		name="sluice-$tag"
		sock="$work/$set-$name.sock"
		serve_flags=()
		if ((PROFILE)); then serve_flags=(--cpuprofile "$data/profile-warm-$set-$tag.pprof"); fi
		sluice_serve "$set-$name" "$sock" "$work/cache-warm-$set-$tag" 1GiB "$r"
		serve_flags=()
		warm_pid[$set/$name]=$BG_PID
		warm_uri[$set/$name]="nbd+unix:///?socket=$sock"
		wait_nbd "${warm_uri[$set/$name]}" "$BG_PID" "$set-$name"
		t0=$SECONDS
		got="$(nbdcopy "${warm_uri[$set/$name]}" - | sha256sum | cut -d' ' -f1)"
		[[ "$got" == "$sha" ]] || die "$set $name served bytes with sha256 $got, the exported ext4 has $sha"
		log "  $name: cache filled by nbdcopy in $((SECONDS - t0)) s; bytes match the exported ext4"
		servers+=("$name")
	done
	warm_sluice[$set]="${servers[*]}"

	cat "$ext4f" >/dev/null # page cache warm for the peers
	bg "$set-nbdkit" nbdkit -f -r -U "$work/$set-nbdkit.sock" file "$ext4f"
	warm_pid[$set/nbdkit]=$BG_PID
	warm_uri[$set/nbdkit]="nbd+unix:///?socket=$work/$set-nbdkit.sock"
	wait_nbd "${warm_uri[$set/nbdkit]}" "$BG_PID" "$set-nbdkit"

	printf '[generic]\n\tunixsock = %s\n[bench]\n\texportname = %s\n\treadonly = true\n' \
		"$work/$set-nbd-server.sock" "$ext4f" >"$work/$set-nbd-server.conf"
	# nbd-server forks into the background (its -d serves one client only);
	# its PID comes from the pid file.
	nbd-server -C "$work/$set-nbd-server.conf" -p "$work/$set-nbd-server.pid" </dev/null >"$logs/$set-nbd-server.log" 2>&1 ||
		{ cat "$logs/$set-nbd-server.log" >&2; die "nbd-server failed to start"; }
	for ((i = 0; i < 100; i++)); do
		[[ -s "$work/$set-nbd-server.pid" ]] && break
		sleep 0.1
	done
	[[ -s "$work/$set-nbd-server.pid" ]] || die "nbd-server wrote no pid file"
	warm_pid[$set/nbd-server]="$(cat "$work/$set-nbd-server.pid")"
	started+=("${warm_pid[$set/nbd-server]}")
	warm_uri[$set/nbd-server]="nbd+unix:///bench?socket=$work/$set-nbd-server.sock"
	wait_nbd "${warm_uri[$set/nbd-server]}" "${warm_pid[$set/nbd-server]}" "$set-nbd-server"

	# -t: keep serving after the first client leaves; -e 8: the default
	# allows one client at a time.
	bg "$set-qemu-nbd" qemu-nbd -r -f raw -t -e 8 -k "$work/$set-qemu-nbd.sock" "$ext4f"
	warm_pid[$set/qemu-nbd]=$BG_PID
	warm_uri[$set/qemu-nbd]="nbd+unix:///?socket=$work/$set-qemu-nbd.sock"
	wait_nbd "${warm_uri[$set/qemu-nbd]}" "$BG_PID" "$set-qemu-nbd"
	local all=("${servers[@]}" "${peers[@]}")

	nruns=$((REPEAT * ${#jobs[@]} * ${#all[@]}))
	log "warm ($set): $nruns fio runs of ${RUNTIME} s ($REPEAT rounds x ${#jobs[@]} jobs x ${#all[@]} servers, rotated)"
	mkdir -p "$data/fio"
	k=0
	for ((rep = 1; rep <= REPEAT; rep++)); do
		for j in "${!jobs[@]}"; do
			read -r rw bs depth <<<"${jobs[j]}"
			n=${#all[@]}
			for ((s = 0; s < n; s++)); do
				srv="${all[(s + rep + j) % n]}"
				out="$data/fio/$set-$srv-$rw-$bs-qd$depth-$rep.json"
				fio --name="$rw-$bs-qd$depth" --ioengine=nbd --uri="${warm_uri[$set/$srv]}" --readonly \
					--rw="$rw" --bs="$bs" --iodepth="$depth" --time_based --runtime="$RUNTIME" \
					--output-format=json >"$out.raw" 2>"$out.err" ||
					{ cat "$out.err" >&2; die "fio $rw $bs qd$depth against $set $srv failed"; }
				# The nbd engine prints a line of its own before the JSON.
				sed -n '/^{/,$p' "$out.raw" >"$out"
				rm -f "$out.raw"
				[[ -s "$out.err" ]] || rm -f "$out.err"
				jq -r --arg set "$set" --arg s "$srv" --arg j "$j" --arg r "$rep" '.jobs[0] |
					if .error != 0 or .read.io_bytes == 0 then error("fio job failed") else . end |
					"\($set)\t\($s)\t\($j)\t\($r)\t\(.read.iops)\t\(.read.bw_bytes / 1048576)"' "$out" >>"$data/warm.tsv" ||
					die "fio $rw $bs qd$depth against $set $srv: no result in $out"
				k=$((k + 1))
				printf '  [%d/%d] %-14s %-13s %s\n' "$k" "$nruns" "$srv" "${job_names[j]}" \
					"$(tail -n1 "$data/warm.tsv" | awk -F'\t' -v j="$j" '{printf (j == 2 ? "%.0f MiB/s" : "%.0f IOPS"), (j == 2 ? $6 : $5)}')"
			done
		done
	done
	for name in "${servers[@]}"; do
		warm_hwm[$set/$name]="$(vm_kib "${warm_pid[$set/$name]}" VmHWM)"
	done
	for name in "${all[@]}"; do
		stop "${warm_pid[$set/$name]}"
	done
	rm -rf "$work"/cache-warm-"$set"-*
	if ((PROFILE)); then
		for name in "${servers[@]}"; do
			tag="${name#sluice-}"
			if [[ -s "$data/profile-warm-$set-$tag.pprof" ]]; then
				go tool pprof -top -nodecount=30 "$SLUICE" "$data/profile-warm-$set-$tag.pprof" \
					>"$data/profile-warm-$set-$tag.txt" 2>/dev/null || true
			fi
		done
	fi
}

if has_phase warm; then
	: >"$data/warm.tsv"
	base_refs=()
	for cs in "${sizes[@]}"; do
		tag="$(tag_of "$cs")"
		base_refs+=("$tag=$REGISTRY_ADDR/${ref[$tag]}")
	done
	warm_set base "bench/convert base: $((ext4_bytes / 1048576)) MiB ext4, $(awk '$2 == "zero" {z++} END {print z + 0}' "$data/chunks-$dtag.txt") of $(wc -l <"$data/chunks-$dtag.txt") chunks all-zero at $default_chunk" \
		"$ext4" "$ext4_sha" "${base_refs[@]}"

	# The image without zero chunks: one file of pseudo-random data.
	log "warm: building the random-data image ($RANDOM_MIB MiB)"
	rnd_layout="$work/random-oci"
	umoci init --layout "$rnd_layout"
	"$PY" "$here/genimage.py" 77 $((RANDOM_MIB << 20)) "$work/random.tar"
	umoci new --image "$rnd_layout:img"
	umoci raw add-layer --image "$rnd_layout:img" "$work/random.tar"
	umoci config --image "$rnd_layout:img" --os linux --architecture "$(dpkg --print-architecture)" \
		--config.cmd /bin/true --no-history
	rm -f "$work/random.tar"
	rnd_ref="$REGISTRY_ADDR/bench/fio-random:latest"
	skopeo copy -q --dest-tls-verify=false "oci:$rnd_layout:img" "docker://$rnd_ref"
	rm -rf "$rnd_layout"
	"$SLUICE" convert --plain-http "$rnd_ref" >"$data/convert-random.txt" 2>"$logs/convert-random.log" ||
		{ cat "$logs/convert-random.log" >&2; die "sluice convert $rnd_ref failed"; }
	"$SLUICE" export --plain-http "$rnd_ref" "$work/random.ext4" >/dev/null 2>"$logs/export-random.log" ||
		{ cat "$logs/export-random.log" >&2; die "sluice export $rnd_ref failed"; }
	"$SLUICE" inspect --plain-http --chunks "$rnd_ref" 2>/dev/null |
		awk '$1 ~ /^[0-9]+$/ && ($2 == "zero" || $2 ~ /^sha256:/)' >"$data/chunks-random.txt"
	warm_set random "$RANDOM_MIB MiB of pseudo-random data: $(($(stat -c %s "$work/random.ext4") / 1048576)) MiB ext4, $(awk '$2 == "zero" {z++} END {print z + 0}' "$data/chunks-random.txt") of $(wc -l <"$data/chunks-random.txt") chunks all-zero at $default_chunk" \
		"$work/random.ext4" "$(sha256sum "$work/random.ext4" | cut -d' ' -f1)" "$dtag=$rnd_ref"
	rm -f "$work/random.ext4"
fi

# ==============================================================================
# cold cache
# ==============================================================================
if has_phase cold; then
	phase_load cold
	log "cold: building and starting throttleproxy (rtt $RTT, bandwidth $BANDWIDTH/s)"
	(cd "$repo_root" && go build -o "$work/throttleproxy" ./bench/fio/throttleproxy) ||
		die "building bench/fio/throttleproxy failed"
	bg throttleproxy "$work/throttleproxy" --listen 127.0.0.1:0 --upstream "http://$REGISTRY_ADDR" \
		--rtt "$RTT" --bandwidth "$BANDWIDTH" --addr-file "$work/proxy.addr"
	proxy_pid=$BG_PID
	PROXY_ADDR="$(wait_addr "$work/proxy.addr" "$proxy_pid" throttleproxy)" || exit 1
	proxy_stats() { curl -fsS "http://$PROXY_ADDR/_stats"; }
	proxy_stats >/dev/null || die "throttleproxy does not answer on $PROXY_ADDR"

	# The second origin: memregistry (go-containerregistry's registry,
	# in-process, blobs in memory) behind a throttleproxy of its own with
	# the same RTT and bandwidth. docker-registry takes milliseconds per
	# range request by itself, more than the budget's 1 ms slack; the
	# budget models a registry whose own time is negligible, and this
	# origin is one. The same images are pushed and converted there
	# (conversion is deterministic: same artifact, same data blob).
	log "cold: memregistry (near-zero service time) behind a second throttleproxy"
	(cd "$repo_root" && go build -o "$work/memregistry" ./bench/fio/memregistry) ||
		die "building bench/fio/memregistry failed"
	bg memregistry "$work/memregistry" --listen 127.0.0.1:0 --addr-file "$work/memreg.addr"
	memreg_pid=$BG_PID
	MEMREG_ADDR="$(wait_addr "$work/memreg.addr" "$memreg_pid" memregistry)" || exit 1
	for cs in "${sizes[@]}"; do
		tag="$(tag_of "$cs")"
		skopeo copy -q --src-tls-verify=false --dest-tls-verify=false \
			"docker://$REGISTRY_ADDR/${ref[$tag]}" "docker://$MEMREG_ADDR/${ref[$tag]}" ||
			die "copying ${ref[$tag]} to memregistry failed"
		"$SLUICE" convert --plain-http --chunk-size "$cs" "$MEMREG_ADDR/${ref[$tag]}" >"$data/convert-mem-$tag.txt" 2>"$logs/convert-mem-$tag.log" ||
			{ cat "$logs/convert-mem-$tag.log" >&2; die "sluice convert --chunk-size $cs to memregistry failed"; }
		a="$(grep -Eo '@sha256:[0-9a-f]{64}' "$data/convert-mem-$tag.txt" | head -n1 | cut -c2-)"
		[[ "$a" == "${artifact[$tag]}" ]] ||
			die "converting to memregistry gave artifact $a, docker-registry has ${artifact[$tag]}: conversion is not deterministic"
	done
	bg throttleproxy-mem "$work/throttleproxy" --listen 127.0.0.1:0 --upstream "http://$MEMREG_ADDR" \
		--rtt "$RTT" --bandwidth "$BANDWIDTH" --addr-file "$work/proxy-mem.addr"
	proxy_mem_pid=$BG_PID
	declare -A origin_proxy origin_direct
	origin_proxy[dreg]="$PROXY_ADDR" origin_direct[dreg]="$REGISTRY_ADDR"
	origin_proxy[mem]="$(wait_addr "$work/proxy-mem.addr" "$proxy_mem_pid" throttleproxy-mem)" || exit 1
	origin_direct[mem]="$MEMREG_ADDR"
	origins=(dreg mem)

	"$PY" "$here/coldread.py" offsets "$nblocks" "$SAMPLE_FRACTION" "$SEED" >"$data/sample.offsets"
	nsample="$(wc -l <"$data/sample.offsets")"

	# First-byte latency, interleaved over chunk sizes and origins: per
	# round, chunk size and origin a fresh cache and process;
	# FIRST_BYTE_READS+1 far-apart offsets (1 MiB-aligned, the same for
	# every chunk size, shifted each round); the first read of a process
	# may still wait for its registry client, set up when the image opens.
	# Each read is paired with a plain GET through the same proxy and one
	# straight from the origin (its service time).
	log "cold: first-byte latency, $REPEAT rounds x ${#sizes[@]} chunk sizes x ${#origins[@]} origins x $((FIRST_BYTE_READS + 1)) reads"
	for ((rep = 1; rep <= REPEAT; rep++)); do
		for cs in "${sizes[@]}"; do
			tag="$(tag_of "$cs")"
			cb="${chunk_bytes[$tag]}"
			awk -v n=$((FIRST_BYTE_READS + 1)) -v rep="$rep" -v reps="$REPEAT" -v size="$ext4_bytes" -v cb="$cb" '
				{ len[$1] = $3; boff[$1] = $4 }
				END {
					mib = int(size / 1048576)
					for (j = 0; j < n; j++) {
						off = int((j + (rep - 0.5) / reps) / n * mib) * 1048576
						c = int(off / cb)
						while (c in boff && boff[c] < 0) c++ # skip zero chunks
						if (!(c in boff)) continue
						print c * cb, boff[c], len[c]
					}
				}' "$data/chunks-$tag.txt" >"$work/fb-$tag-$rep.in"
			for origin in "${origins[@]}"; do
				name="cold-fb-$origin-$tag-$rep"
				blob_url="http://${origin_proxy[$origin]}/v2/bench/fio-$tag/blobs/${data_digest[$tag]}"
				# The lazy peer: nbdkit's curl plugin serving the data
				# blob itself through the same proxy (no cache, no
				# decompression, no verification), each chunk's stored
				# bytes read whole.
				bg "curl-$name" nbdkit -f -r -U "$work/curl-$name.sock" curl url="$blob_url"
				curl_pid=$BG_PID
				wait_nbd "nbd+unix:///?socket=$work/curl-$name.sock" "$curl_pid" "curl-$name"
				sluice_serve "$name" "$work/$name.sock" "$work/cache-$name" 0 "${origin_proxy[$origin]}/${ref[$tag]}"
				wait_nbd "nbd+unix:///?socket=$work/$name.sock" "$BG_PID" "$name"
				"$PY" "$here/coldread.py" pair "nbd+unix:///?socket=$work/$name.sock" "$blob_url" \
					"http://${origin_direct[$origin]}/v2/bench/fio-$tag/blobs/${data_digest[$tag]}" \
					"nbd+unix:///?socket=$work/curl-$name.sock" \
					<"$work/fb-$tag-$rep.in" >"$data/firstbyte-$origin-$tag-$rep.txt" ||
					die "cold first-byte reads ($name) failed"
				stop "$BG_PID"
				stop "$curl_pid"
				rm -rf "$work/cache-$name"
			done
		done
	done

	declare -A amp_fetched amp_requests amp_sluice amp_floor amp_floor_avg amp_floor_raw amp_chunks amp_runs
	for cs in "${sizes[@]}"; do
		tag="$(tag_of "$cs")"
		runs=1
		[[ "$tag" == "$dtag" ]] && runs=$REPEAT
		for ((run = 1; run <= runs; run++)); do
			name="cold-sample-$tag"
			log "cold: $cs: reading $nsample random blocks (${SAMPLE_FRACTION} of $nblocks) through the proxy (run $run of $runs)"
			sluice_serve "$name" "$work/$name.sock" "$work/cache-$name" 0 "$PROXY_ADDR/${ref[$tag]}"
			pid=$BG_PID
			wait_nbd "nbd+unix:///?socket=$work/$name.sock" "$pid" "$name"
			proxy_stats >"$data/proxy-before-$tag.json"
			t0=$SECONDS
			"$PY" "$here/coldread.py" nbd "nbd+unix:///?socket=$work/$name.sock" \
				<"$data/sample.offsets" >"$data/sample-$tag.txt" || die "cold sample reads ($name) failed"
			proxy_stats >"$data/proxy-after-$tag.json"
			stop "$pid"
			rm -rf "$work/cache-$name"
			d="${data_digest[$tag]}"
			amp_fetched[$tag]=$(($(jq -r --arg d "$d" '.blobs[$d].bytes // 0' "$data/proxy-after-$tag.json") - $(jq -r --arg d "$d" '.blobs[$d].bytes // 0' "$data/proxy-before-$tag.json")))
			amp_requests[$tag]=$(($(jq -r --arg d "$d" '.blobs[$d].requests // 0' "$data/proxy-after-$tag.json") - $(jq -r --arg d "$d" '.blobs[$d].requests // 0' "$data/proxy-before-$tag.json")))
			amp_sluice[$tag]="$(jq -rR 'fromjson? | select(.message == "stopped") | .fetched_bytes' "$logs/$name.log" 2>/dev/null | tail -n1 || true)"
			# Floors: exact = stored bytes of the distinct non-zero chunks read
			# (a digest counts once); avg = their count x the mean stored chunk;
			# raw = their count x the chunk size (uncompressed).
			read -r "amp_chunks[$tag]" "amp_floor[$tag]" "amp_floor_avg[$tag]" "amp_floor_raw[$tag]" < <(
				awk -v cb="${chunk_bytes[$tag]}" '
					FNR == NR { dg[$1] = $2; len[$1] = $3; if ($2 != "zero") { nz++; tot += $3 }; next }
					{ c = int($1 / cb); if (dg[c] != "zero" && !(dg[c] in seen)) { seen[dg[c]] = 1; n++; sum += len[c] } }
					END { printf "%d %d %.0f %.0f\n", n, sum, n * tot / nz, n * cb }' \
					"$data/chunks-$tag.txt" "$data/sample.offsets")
			log "  $cs: ${amp_fetched[$tag]} bytes in ${amp_requests[$tag]} requests for ${amp_chunks[$tag]} chunks (floor ${amp_floor[$tag]}) in $((SECONDS - t0)) s"
			amp_runs[$tag]+="${amp_fetched[$tag]} "
		done
	done
	stop "$proxy_pid"
	stop "$proxy_mem_pid"
	stop "$memreg_pid"
	cp "$logs/throttleproxy.log" "$data/throttleproxy.log"
fi

# ==============================================================================
# RSS: many images in one process
# ==============================================================================
rss_skipped=""
if has_phase rss; then
	need_gib=$((RSS_IMAGES * RSS_IMAGE_MIB * 3 / 1024 + 4))
	free_gib=$(($(df -Pk "$work" | awk 'NR == 2 {print $4}') / 1048576))
	if ((free_gib < need_gib)); then
		rss_skipped="skipped: $free_gib GiB free in $work, need about $need_gib GiB"
		log "rss: $rss_skipped"
	fi
fi
if has_phase rss && [[ -z "$rss_skipped" ]]; then
	log "rss: building $RSS_IMAGES images of $RSS_IMAGE_MIB MiB (generate, push, convert)"
	rss_layout="$work/rss-oci"
	umoci init --layout "$rss_layout"
	rss_refs=()
	t0=$SECONDS
	for ((i = 0; i < RSS_IMAGES; i++)); do
		"$PY" "$here/genimage.py" $((1000 + i)) $((RSS_IMAGE_MIB << 20)) "$work/rss-$i.tar"
		umoci new --image "$rss_layout:img$i"
		umoci raw add-layer --image "$rss_layout:img$i" "$work/rss-$i.tar"
		rm -f "$work/rss-$i.tar"
		umoci config --image "$rss_layout:img$i" --os linux --architecture "$(dpkg --print-architecture)" \
			--config.cmd /bin/true --no-history
		r="$REGISTRY_ADDR/bench/rss-$i:latest"
		skopeo copy -q --dest-tls-verify=false "oci:$rss_layout:img$i" "docker://$r"
		umoci rm --image "$rss_layout:img$i"
		umoci gc --layout "$rss_layout"
		mkdir -p "$work/convert-tmp"
		"$SLUICE" convert --plain-http --work-dir "$work/convert-tmp" "$r" >"$data/convert-rss-$i.txt" 2>"$logs/convert-rss-$i.log" ||
			{ cat "$logs/convert-rss-$i.log" >&2; die "sluice convert $r failed"; }
		rss_refs+=("$r")
		echo "  image $((i + 1))/$RSS_IMAGES ready ($((SECONDS - t0)) s)"
	done
	rm -rf "$rss_layout" "$work/convert-tmp"
	rss_ext4_mib="$(awk '/ext4 size/ {print $3, $4; exit}' "$data/convert-rss-0.txt")"

	rss_hwm_all=""
	for ((trial = 1; trial <= RSS_TRIALS; trial++)); do
		phase_load "rss (trial $trial)"
		log "rss: one sluice serve for all $RSS_IMAGES images; nbdcopy of each, in parallel"
		serve_env=(GODEBUG=gctrace=1)
		sluice_serve "rss-$trial" "$work/rss.sock" "$work/cache-rss" 50MiB "${rss_refs[@]}"
		serve_env=()
		rss_pid=$BG_PID
		wait_nbd "nbd+unix:///?socket=$work/rss.sock" "$rss_pid" "rss-$trial"
		(
			while kill -0 "$rss_pid" 2>/dev/null; do
				echo "$SECONDS $(vm_kib "$rss_pid" VmRSS)"
				sleep 0.5
			done
		) >"$data/rss-samples-$trial.txt" 2>/dev/null &
		sampler_pid=$!
		started+=("$sampler_pid")
		t0=$SECONDS
		copies=()
		for r in "${rss_refs[@]}"; do
			nbdcopy "nbd+unix:///$r?socket=$work/rss.sock" null: &
			copies+=($!)
			started+=($!)
		done
		for p in "${copies[@]}"; do
			wait "$p" || die "nbdcopy of an rss image failed"
		done
		rss_read_s=$((SECONDS - t0))
		rss_hwm_kib="$(vm_kib "$rss_pid" VmHWM)"
		rss_end_kib="$(vm_kib "$rss_pid" VmRSS)"
		stop "$rss_pid"
		stop "$sampler_pid"
		cp "$logs/rss-$trial.log" "$data/rss-serve-$trial.log"
		# gctrace: "gc N @T s P%: ... A->B->C MB, D MB goal, ..."
		read -r gc_count gc_heap_max gc_live_max gc_goal_max < <(awk '$1 == "gc" && /MB goal/ {
				n++
				for (i = 1; i <= NF; i++) {
					if ($i ~ /->.*->/) {
						split($i, h, "->")
						if (h[1] + 0 > hm) hm = h[1] + 0
						if (h[3] + 0 > lm) lm = h[3] + 0
					}
					if ($(i + 1) == "MB" && $(i + 2) == "goal,") { if ($i + 0 > gm) gm = $i + 0 }
				}
			} END { printf "%d %d %d %d\n", n, hm, lm, gm }' "$logs/rss-$trial.log")
		# "gc N @Ts P%:": P is the share of CPU time spent in GC since the start.
		gc_cpu="$(awk '$1 == "gc" && $4 ~ /%:$/ {p = $4} END {sub(/:$/, "", p); print (p == "" ? "?" : p)}' "$logs/rss-$trial.log")"
		rm -rf "$work/cache-rss"
		log "rss: trial $trial: peak $((rss_hwm_kib / 1024)) MiB (VmHWM) after reading $RSS_IMAGES images in $rss_read_s s"
		rss_hwm_all+="$rss_hwm_kib "
		# The report details the worst trial.
		if [[ -z "${rss_worst_kib:-}" ]] || ((rss_hwm_kib > rss_worst_kib)); then
			rss_worst_kib=$rss_hwm_kib rss_worst="$gc_count $gc_heap_max $gc_live_max $gc_goal_max $gc_cpu $rss_end_kib $rss_read_s $trial"
		fi
	done
	read -r gc_count gc_heap_max gc_live_max gc_goal_max gc_cpu rss_end_kib rss_read_s rss_worst_trial <<<"$rss_worst"
fi

# ==============================================================================
# report
# ==============================================================================
pass() { awk -v ok="$1" 'BEGIN {print ok ? "PASS" : "FAIL"}'; }
verdicts=()
git_rev="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo none)"
git_dirty=""
if git -C "$repo_root" status --porcelain 2>/dev/null | grep -q .; then git_dirty=" (dirty)"; fi

{
	echo "sluice NBD serving benchmark (bench/fio/run.sh)"
	echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "commit:      $git_rev$git_dirty"
	echo "binary:      $sluice_src (built $sluice_built, sha256 $(sha256sum "$SLUICE" | cut -c1-12))"
	echo "machine:     $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -r), $(go version 2>/dev/null | awk '{print $3}'), fio $(fio --version | sed 's/^fio-//')"
	echo "image:       bench/convert base: $((ext4_bytes / 1048576)) MiB ext4 ($nblocks blocks of 4 KiB), sha256 ${ext4_sha:0:16}"
	echo "chunk sizes: ${sizes[*]} (default: $default_chunk)"
	for cs in "${sizes[@]}"; do
		tag="$(tag_of "$cs")"
		awk -v cs="$cs" -v ds="${data_size[$tag]}" '$2 != "zero" {n++; s += $3} $2 == "zero" {z++}
			END {printf "  %-7s %5d chunks (%d all-zero), data blob %.1f MiB, mean stored chunk %.1f KiB (%.0f%% of %s)\n",
				cs, NR, z, ds / 1048576, s / n / 1024, 100 * s / n / (cs ~ /MiB/ ? cs * 1048576 : cs * 1024), cs}' "$data/chunks-$tag.txt"
	done
	echo "elapsed:     $((SECONDS - t_start)) s"
	echo "load average before each phase (1, 5, 15 min):"
	for l in "${loads[@]}"; do echo "  $l"; done

	if has_phase warm; then
		for set in "${warm_sets[@]}"; do
			read -ra set_sluice <<<"${warm_sluice[$set]}"
			all_servers=("${set_sluice[@]}" "${peers[@]}")
			echo
			echo "== warm cache, $set image ($set: ${warm_label[$set]}) =="
			echo "fio ioengine=nbd, ${RUNTIME} s per run, $REPEAT rotated rounds, medians; sluice: serve --background-rate 1GiB,"
			echo "cache filled by one nbdcopy; peers serve the exported ext4, page cache warm"
			printf '%-16s %14s %14s %14s   %s\n' "server" "${job_names[0]}" "${job_names[1]}" "${job_names[2]}" "peak RSS"
			printf '%-16s %14s %14s %14s\n' "" "${job_units[0]}" "${job_units[1]}" "${job_units[2]}"
			unset med best best_name
			declare -A med best best_name
			for srv in "${all_servers[@]}"; do
				for j in 0 1 2; do
					col=$((j == 2 ? 6 : 5))
					med[$srv,$j]="$(awk -F'\t' -v set="$set" -v s="$srv" -v j="$j" -v c="$col" '$1 == set && $2 == s && $3 == j {print $c}' "$data/warm.tsv" | median)"
				done
				extra=""
				[[ -n "${warm_hwm[$set/$srv]:-}" ]] && extra="$((warm_hwm[$set/$srv] / 1024)) MiB"
				label="$srv"
				[[ "$srv" == "sluice-$dtag" ]] && label="$srv*"
				printf '%-16s %14.0f %14.0f %14.0f   %s\n' "$label" "${med[$srv,0]}" "${med[$srv,1]}" "${med[$srv,2]}" "$extra"
			done
			for j in 0 1 2; do
				best[$j]=0
				for p in "${peers[@]}"; do
					if awk -v a="${med[$p,$j]}" -v b="${best[$j]}" 'BEGIN {exit !(a > b)}'; then
						best[$j]="${med[$p,$j]}" best_name[$j]="$p"
					fi
				done
			done
			printf '%-16s %14.0f %14.0f %14.0f   (%s, %s, %s)\n' "best peer" "${best[0]}" "${best[1]}" "${best[2]}" "${best_name[0]}" "${best_name[1]}" "${best_name[2]}"
			echo "(* default chunk size)"
			echo
			echo "ratios of medians, sluice/peer (higher is better for sluice):"
			printf '%-30s %14s %14s %14s\n' "" "${job_names[0]}" "${job_names[1]}" "${job_names[2]}"
			for srv in "${set_sluice[@]}"; do
				for p in "${peers[@]}" best; do
					row=()
					for j in 0 1 2; do
						if [[ "$p" == best ]]; then b="${best[$j]}"; else b="${med[$p,$j]}"; fi
						row+=("$(awk -v a="${med[$srv,$j]}" -v b="$b" 'BEGIN {printf "%.2fx", a / b}')")
					done
					printf '%-30s %14s %14s %14s\n' "$srv / $p" "${row[@]}"
				done
			done
			echo
			echo "per round: sluice-$dtag / the best peer of the same round (each round runs every server once per job):"
			for j in 0 1 2; do
				col=$((j == 2 ? 6 : 5))
				rounds="$(awk -F'\t' -v set="$set" -v j="$j" -v c="$col" -v me="sluice-$dtag" '
					$1 == set && $3 == j { if ($2 == me) s[$4] = $c; else if ($2 ~ /^(nbdkit|nbd-server|qemu-nbd)$/ && $c > b[$4]) b[$4] = $c }
					END { for (r in s) if (b[r] > 0) print s[r] / b[r] }' "$data/warm.tsv")"
				read -r worst medr < <(worst_median LOW <<<"$rounds")
				v="$(pass "$(awk -v r="$worst" -v t="$TARGET_WARM_RATIO" 'BEGIN {print (r >= t)}')")"
				verdicts+=("$v")
				printf 'target warm %-7s %-13s worst %.2fx, median %.2fx of %d rounds   >= %sx   %s\n' "$set" "${job_names[j]}:" \
					"$worst" "$medr" "$(wc -l <<<"$rounds")" "$TARGET_WARM_RATIO" "$v"
			done
		done
		if ((PROFILE)); then echo "CPU profiles of the warm sluice servers: ${data_final#"$repo_root"/}/profile-warm-*.txt"; fi
	fi

	if has_phase cold; then
		echo
		echo "== cold cache: through throttleproxy (rtt $RTT, $BANDWIDTH/s), --background-rate 0, fresh cache per process =="
		echo "amplification: $nsample random 4 KiB blocks (${SAMPLE_FRACTION} of $nblocks, seed $SEED), queue depth 1"
		echo "  floor = stored (compressed) bytes of the distinct non-zero chunks the blocks fall in, each digest once"
		echo "  (also shown: chunks x mean stored chunk, and chunks x chunk size uncompressed)"
		printf '%-8s %7s %12s %9s %12s %12s %14s %8s %9s %9s\n' "chunk" "chunks" "fetched B" "requests" "floor B" "avg floor B" "uncompr. B" "ratio" "miss med" "hit med"
		for cs in "${sizes[@]}"; do
			tag="$(tag_of "$cs")"
			ratio="$(awk -v a="${amp_fetched[$tag]}" -v b="${amp_floor[$tag]}" 'BEGIN {printf "%.3f", a / b}')"
			# Latency of reads that faulted (first read of a chunk) and of hits.
			read -r miss_med hit_med < <(awk -v cb="${chunk_bytes[$tag]}" 'FNR == NR {dg[$1] = $2; next}
				{ c = int($1 / cb); if (dg[c] != "zero" && !(dg[c] in seen)) { seen[dg[c]] = 1; print "m", $2 } else print "h", $2 }' \
				"$data/chunks-$tag.txt" "$data/sample-$tag.txt" | sort -k1,1 -k2,2g | awk '
				{ v[$1, ++n[$1]] = $2 }
				END { for (k = 1; k <= 2; k++) { t = (k == 1) ? "m" : "h"; c = n[t]
					if (c == 0) m = "-"; else if (c % 2) m = v[t, (c + 1) / 2]; else m = (v[t, c / 2] + v[t, c / 2 + 1]) / 2
					printf "%s ", (m == "-") ? "-" : sprintf("%.1fms", m / 1000) } print "" }')
			printf '%-8s %7d %12d %9d %12d %12d %14d %7sx %9s %9s\n' "$cs" "${amp_chunks[$tag]}" "${amp_fetched[$tag]}" "${amp_requests[$tag]}" \
				"${amp_floor[$tag]}" "${amp_floor_avg[$tag]}" "${amp_floor_raw[$tag]}" "$ratio" "$miss_med" "$hit_med"
			if [[ -n "${amp_sluice[$tag]}" && "${amp_sluice[$tag]}" != "${amp_fetched[$tag]}" ]]; then
				echo "         (sluice itself counted ${amp_sluice[$tag]} bytes fetched)"
			fi
		done
		echo "  fetched/floor for $nsample reads, $((nsample * 4096)) bytes asked: ratio to the 4 KiB actually read:"
		for cs in "${sizes[@]}"; do
			tag="$(tag_of "$cs")"
			printf '    %-7s %.1fx the bytes read\n' "$cs" "$(awk -v a="${amp_fetched[$tag]}" -v b=$((nsample * 4096)) 'BEGIN {print a / b}')"
		done
		echo
		echo "first-byte latency: single 4 KiB reads of far-apart cold chunks, $FIRST_BYTE_READS per process x $REPEAT processes, per origin;"
		echo "  budget = rtt + stored chunk bytes / bandwidth + ${TARGET_FIRST_BYTE_SLACK_MS} ms, per read; raw = plain HTTP GET of the"
		echo "  same chunk through the same proxy, alternating with the read (network + registry, no sluice); origin ="
		echo "  the same GET straight from the registry, no proxy (the registry's own service time); proxy+ = raw GET"
		echo "  - (rtt + transfer + origin): what the proxy adds beyond its model (its own hop, sleep overshoot);"
		echo "  nbdkit-curl = the lazy peer, nbdkit's curl plugin serving the data blob through the same proxy, reading"
		echo "  the chunk's stored bytes whole (no decompression, no verification), in turn with the other two"
		declare -A fb_ratio fb_over fb_peer_budget fb_vs_peer
		declare -A origin_name=([dreg]=docker-registry [mem]=memregistry)
		declare -A origin_label=([dreg]="docker-registry (Debian's, filesystem storage)" [mem]="memregistry (go-containerregistry in-process, near-zero service time)")
		for origin in "${origins[@]}"; do
			echo "  origin: ${origin_label[$origin]}"
			printf '%-8s %10s %10s %10s %10s %9s %12s %14s %12s %12s %12s %14s %9s\n' "chunk" "sluice" "budget" "raw GET" "origin" "proxy+" "sluice-raw" "sluice/budget" "nbdkit-curl" "curl/budget" "sluice/curl" "1st read/proc" "mean KiB"
			for cs in "${sizes[@]}"; do
				tag="$(tag_of "$cs")"
				k="$origin,$tag"
				# Lines after the first of each file: the client is set up.
				all="$(for f in "$data"/firstbyte-"$origin"-"$tag"-*.txt; do tail -n +2 "$f"; done)"
				firsts="$(for f in "$data"/firstbyte-"$origin"-"$tag"-*.txt; do head -n1 "$f"; done | awk '{print $3}' | median)"
				s_med="$(awk '{print $3}' <<<"$all" | median)"
				raw_med="$(awk '{print $4}' <<<"$all" | median)"
				direct_med="$(awk '{print $5}' <<<"$all" | median)"
				proxy_over="$(awk -v rtt="$rtt_us" -v bw="$bw_bytes" '{print $4 - rtt - $2 / bw * 1e6 - $5}' <<<"$all" | median)"
				b_med="$(awk -v rtt="$rtt_us" -v bw="$bw_bytes" -v slack=$((TARGET_FIRST_BYTE_SLACK_MS * 1000)) '{print rtt + $2 / bw * 1e6 + slack}' <<<"$all" | median)"
				fb_over[$k]="$(awk '{print $3 - $4}' <<<"$all" | median)"
				fb_ratio[$k]="$(awk -v rtt="$rtt_us" -v bw="$bw_bytes" -v slack=$((TARGET_FIRST_BYTE_SLACK_MS * 1000)) '{print $3 / (rtt + $2 / bw * 1e6 + slack)}' <<<"$all" | median)"
				peer_med="$(awk '{print $6}' <<<"$all" | median)"
				fb_peer_budget[$k]="$(awk -v rtt="$rtt_us" -v bw="$bw_bytes" -v slack=$((TARGET_FIRST_BYTE_SLACK_MS * 1000)) '{print $6 / (rtt + $2 / bw * 1e6 + slack)}' <<<"$all" | median)"
				fb_vs_peer[$k]="$(awk '{print $3 / $6}' <<<"$all" | median)"
				kib="$(awk '{s += $2; n++} END {printf "%.0f", s / n / 1024}' <<<"$all")"
				printf '%-8s %8.1fms %8.1fms %8.1fms %8.1fms %7.1fms %10.1fms %13.2fx %10.1fms %11.2fx %11.2fx %12.1fms %9s\n' "$cs" "$(awk -v v="$s_med" 'BEGIN {print v / 1000}')" \
					"$(awk -v v="$b_med" 'BEGIN {print v / 1000}')" "$(awk -v v="$raw_med" 'BEGIN {print v / 1000}')" \
					"$(awk -v v="$direct_med" 'BEGIN {print v / 1000}')" "$(awk -v v="$proxy_over" 'BEGIN {print v / 1000}')" \
					"$(awk -v v="${fb_over[$k]}" 'BEGIN {print v / 1000}')" "${fb_ratio[$k]}" \
					"$(awk -v v="$peer_med" 'BEGIN {print v / 1000}')" "${fb_peer_budget[$k]}" "${fb_vs_peer[$k]}" \
					"$(awk -v v="$firsts" 'BEGIN {print v / 1000}')" "$kib"
			done
		done
		echo "  (proxy+, sluice-raw and the ratios are medians of per-read values)"
		echo
		for cs in "${sizes[@]}"; do
			tag="$(tag_of "$cs")"
			read -r worst medr < <(tr ' ' '\n' <<<"${amp_runs[$tag]}" | awk -v b="${amp_floor[$tag]}" 'NF {print $1 / b}' | worst_median HIGH)
			v="$(pass "$(awk -v r="$worst" -v t="$TARGET_AMPLIFICATION" 'BEGIN {print (r <= t)}')")"
			[[ "$tag" == "$dtag" ]] && verdicts+=("$v")
			printf 'target cold bytes fetched    %-7s worst %.2fx, median %.2fx floor (%d runs)   <= %sx   %s\n' "$cs" "$worst" "$medr" \
				"$(wc -w <<<"${amp_runs[$tag]}")" "$TARGET_AMPLIFICATION" "$v"
		done
		# The budget models a registry of negligible service time: the
		# target is checked against memregistry; docker-registry's figures
		# are shown the same way, not counted.
		# sluice's own share of a fault: per process, the median over its
		# reads (after the first) of sluice read - raw GET of the same chunk.
		for origin in mem dreg; do
			for cs in "${sizes[@]}"; do
				tag="$(tag_of "$cs")"
				shares="$(for f in "$data"/firstbyte-"$origin"-"$tag"-*.txt; do tail -n +2 "$f" | awk '{print $3 - $4}' | median; done)"
				read -r worst medr < <(worst_median HIGH <<<"$shares")
				v="$(pass "$(awk -v w="$worst" -v t=$((TARGET_OWN_SHARE_MS * 1000)) 'BEGIN {print (w <= t)}')")"
				if [[ "$origin" == mem && "$tag" == "$dtag" ]]; then
					verdicts+=("$v")
					# The spread of single reads' differences, all processes.
					iqr="$(for f in "$data"/firstbyte-"$origin"-"$tag"-*.txt; do tail -n +2 "$f" | awk '{print $3 - $4}'; done |
						sort -g | awk '{v[NR] = $1} END { if (NR < 4) print "nan"; else printf "%.2f..%.2f", v[int(NR / 4) + 1] / 1000, v[int(3 * NR / 4)] / 1000 }')"
					printf 'target cold own share of a fault  %-7s worst %.2f ms, median %.2f ms of %d processes (memregistry; single reads %s ms, interquartile)   <= %d ms   %s\n' \
						"$cs" "$(awk -v v="$worst" 'BEGIN {print v / 1000}')" "$(awk -v v="$medr" 'BEGIN {print v / 1000}')" \
						"$(wc -l <<<"$shares")" "$iqr" "$TARGET_OWN_SHARE_MS" "$v"
				else
					printf 'not a target: own share           %-7s worst %.2f ms, median %.2f ms (%s)\n' "$cs" \
						"$(awk -v v="$worst" 'BEGIN {print v / 1000}')" "$(awk -v v="$medr" 'BEGIN {print v / 1000}')" "${origin_name[$origin]}"
				fi
			done
		done
		echo "(not a target: first byte against the budget rtt + transfer + ${TARGET_FIRST_BYTE_SLACK_MS} ms, medians:"
		for origin in mem dreg; do
			for cs in "${sizes[@]}"; do
				tag="$(tag_of "$cs")"
				printf '  %-16s %-7s %.2fx budget\n' "${origin_name[$origin]}" "$cs" "${fb_ratio[$origin,$tag]}"
			done
		done
		echo ")"
	fi

	if has_phase rss; then
		echo
		echo "== RSS: $RSS_IMAGES images in one sluice serve =="
		if [[ -n "$rss_skipped" ]]; then
			echo "$rss_skipped"
		else
			echo "images:   $RSS_IMAGES x $rss_ext4_mib ext4 (one $RSS_IMAGE_MIB MiB file of ~2:1 compressible pseudo-random data each, no chunk shared)"
			echo "reading:  nbdcopy of every export in parallel; --background-rate 50MiB (the default); a fresh process and cache dir per trial"
			echo "trials:   peak RSS (VmHWM) $(for k in $rss_hwm_all; do printf '%.1f ' "$(awk -v a="$k" 'BEGIN {print a / 1024}')"; done)MiB"
			echo "worst trial ($rss_worst_trial): read in $rss_read_s s; $gc_count GCs ($gc_cpu of CPU time in GC); largest live heap after a GC $gc_live_max MB,"
			echo "  heap at a GC start up to $gc_heap_max MB, goal up to $gc_goal_max MB (GODEBUG=gctrace=1); RSS at the end $((rss_end_kib / 1024)) MiB;"
			echo "  samples every 0.5 s: ${data_final#"$repo_root"/}/rss-samples-$rss_worst_trial.txt"
			read -r worst medr < <(tr ' ' '\n' <<<"$rss_hwm_all" | awk 'NF {print $1 / 1024}' | worst_median HIGH)
			v="$(pass "$(awk -v a="$worst" -v t="$TARGET_RSS_MIB" 'BEGIN {print (a <= t)}')")"
			verdicts+=("$v")
			printf 'target RSS peak (VmHWM)      worst %.1f MiB, median %.1f MiB of %d trials   <= %d MiB   %s\n' "$worst" "$medr" "$RSS_TRIALS" "$TARGET_RSS_MIB" "$v"
		fi
	fi
} >"$data/latest.txt"
mkdir -p "$results_dir"
rm -rf "$data_final.tmp"
cp -a "$data" "$data_final.tmp"
rm -rf "$data_final"
mv "$data_final.tmp" "$data_final"
cp "$data/latest.txt" "$results.tmp"
mv "$results.tmp" "$results"
echo
cat "$results"
echo
echo "(written to ${results#"$repo_root"/}; raw data in ${data_final#"$repo_root"/}/)"

if [[ "$BENCH_STRICT" == 1 && " ${verdicts[*]} " == *" FAIL "* ]]; then
	exit 1
fi
