# shellcheck shell=bash
# lib.sh: shell helpers shared by scripts/demo.sh and bench/*/run.sh.
# Source it; it defines functions only.
#
#   registry_start DIR   start Debian's docker-registry on 127.0.0.1 with
#                        filesystem storage under DIR; sets REGISTRY_PID,
#                        REGISTRY_ADDR (host:port) and REGISTRY_STORAGE.
#   registry_stop        stop the registry started above (by its PID).
#   port_in_use PORT     true if something listens on 127.0.0.1:PORT.
#   free_port FROM       print the first free TCP port >= FROM.
#   oci_busybox DIR TAG  build a busybox OCI image layout at DIR:TAG
#                        (no internet needed: Debian's busybox-static + umoci).
#   containerd_start DIR SOCKET, containerd_stop
#                        a private containerd with sluiced's proxy snapshotter;
#                        sets CONTAINERD_PID and CONTAINERD_ADDR.
#   sweep_dir DIR        unmount, detach and stop what is left below DIR.
#   debian_mirror SUITE  print the Debian mirror apt uses for SUITE
#                        ($SLUICE_BENCH_MIRROR if set).
#   bench_base_dir CACHE SUITE INCLUDE
#                        print the cache dir of a debootstrap base (keyed by
#                        its inputs), shared by bench/convert and bench/startup.
#   bench_rootfs_tar DIR SUITE INCLUDE
#                        build DIR/base-rootfs.tar once: debootstrap
#                        --variant=minbase --include=INCLUDE SUITE, as a tar.

REGISTRY_PID=""
REGISTRY_ADDR=""
REGISTRY_STORAGE=""
CONTAINERD_PID=""
CONTAINERD_ADDR=""

log() { echo "==> $*"; }
die() {
	echo "ERROR: $*" >&2
	exit 1
}

port_in_use() {
	ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

free_port() {
	local p="$1"
	while port_in_use "$p"; do
		p=$((p + 1))
		((p < 65535)) || die "no free TCP port found"
	done
	echo "$p"
}

registry_start() {
	local dir="$1" want="${SLUICE_REGISTRY_PORT:-5000}" port
	port="$(free_port "$want")"
	if [[ "$port" != "$want" ]]; then
		log "port $want is taken; starting the registry on port $port instead"
	fi
	REGISTRY_STORAGE="$dir/storage"
	mkdir -p "$REGISTRY_STORAGE"
	cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_STORAGE
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
	docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
	REGISTRY_PID=$!
	REGISTRY_ADDR="127.0.0.1:$port"
	local i
	for ((i = 0; i < 100; i++)); do
		if curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/" 2>/dev/null; then
			return 0
		fi
		if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then
			cat "$dir/registry.log" >&2
			die "docker-registry exited during startup"
		fi
		sleep 0.1
	done
	cat "$dir/registry.log" >&2
	die "docker-registry did not answer on $REGISTRY_ADDR within 10 s"
}

registry_stop() {
	if [[ -n "$REGISTRY_PID" ]] && kill -0 "$REGISTRY_PID" 2>/dev/null; then
		kill "$REGISTRY_PID" 2>/dev/null || true
		wait "$REGISTRY_PID" 2>/dev/null || true
	fi
	REGISTRY_PID=""
}

# oci_busybox DIR TAG: a one-layer image with /bin/busybox, its applet links,
# /etc/passwd and /etc/group; entrypoint /bin/sh.
oci_busybox() {
	local layout="$1" tag="$2" work
	work="$(mktemp -d)"
	umoci init --layout "$layout" 2>/dev/null || [[ -f "$layout/oci-layout" ]] ||
		die "umoci init $layout failed"
	umoci new --image "$layout:$tag"
	umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
	local rootfs="$work/bundle/rootfs"
	mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
	chmod 1777 "$rootfs/tmp"
	cp /bin/busybox "$rootfs/bin/busybox"
	local applet
	for applet in $("$rootfs/bin/busybox" --list); do
		[[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
	echo "hello from a sluice demo image" >"$rootfs/etc/motd"
	umoci repack --image "$layout:$tag" "$work/bundle" >/dev/null
	umoci config --image "$layout:$tag" --config.cmd /bin/sh \
		--config.env PATH=/bin --config.workingdir / >/dev/null
	umoci gc --layout "$layout"
	rm -rf "$work"
}

# containerd_start DIR SNAPSHOTTER_SOCKET: a private containerd (config, root,
# state and socket under DIR) without CRI, with the proxy snapshotter
# "sluice" at SNAPSHOTTER_SOCKET (start sluiced first); sets CONTAINERD_PID
# and CONTAINERD_ADDR.
containerd_start() {
	local dir="$1" proxy="$2" i
	mkdir -p "$dir"
	CONTAINERD_ADDR="$dir/containerd.sock"
	cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$CONTAINERD_ADDR"
[ttrpc]
  address = "$CONTAINERD_ADDR.ttrpc"
[proxy_plugins.sluice]
  type = "snapshot"
  address = "$proxy"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
	containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
	CONTAINERD_PID=$!
	for ((i = 0; i < 300; i++)); do
		if ctr --address "$CONTAINERD_ADDR" version >/dev/null 2>&1; then
			return 0
		fi
		if ! kill -0 "$CONTAINERD_PID" 2>/dev/null; then
			tail -n 30 "$dir/containerd.log" >&2
			die "containerd exited during startup"
		fi
		sleep 0.1
	done
	tail -n 30 "$dir/containerd.log" >&2
	die "containerd did not answer on $CONTAINERD_ADDR within 30 s"
}

# containerd_stop: stop the containerd started above (by its PID), then the
# shims it started (their command line names its address).
containerd_stop() {
	local pid
	if [[ -n "$CONTAINERD_PID" ]] && kill -0 "$CONTAINERD_PID" 2>/dev/null; then
		kill "$CONTAINERD_PID" 2>/dev/null || true
		wait "$CONTAINERD_PID" 2>/dev/null || true
	fi
	CONTAINERD_PID=""
	[[ -n "$CONTAINERD_ADDR" ]] || return 0
	for pid in $(pids_naming "-address $CONTAINERD_ADDR "); do
		kill "$pid" 2>/dev/null || true
	done
}

# pids_naming STRING: the PIDs (other than this shell) whose command line
# contains STRING.
pids_naming() {
	local f pid args
	for f in /proc/[0-9]*/cmdline; do
		pid="${f#/proc/}"
		pid="${pid%/cmdline}"
		[[ "$pid" != "$$" && "$pid" != "$BASHPID" ]] || continue
		args="$(tr '\0' ' ' 2>/dev/null <"$f")" || continue
		if [[ "$args" == *"$1"* ]]; then echo "$pid"; fi
	done
	return 0
}

# sweep_dir DIR: unmount, detach and stop (by PID) whatever is left below
# DIR: mounts (deepest first; FUSE ones after the loop devices on them),
# loop devices backed by files below it, processes naming it.
sweep_dir() {
	local dir="$1" mounts point fstype loop back pid
	mounts="$(awk -v d="$dir/" '{ split($0, a, " - "); split(a[2], b, " "); if (index($5, d) == 1) print length($5), $5, b[1] }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2-)"
	while read -r point fstype; do
		[[ -n "$point" && "$fstype" != fuse* ]] || continue
		umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null || true
	done <<<"$mounts"
	for loop in /sys/block/loop*; do
		back="$(cat "$loop/loop/backing_file" 2>/dev/null)" || continue
		if [[ "$back" == "$dir/"* ]]; then losetup -d "/dev/${loop##*/}" 2>/dev/null || true; fi
	done
	while read -r point fstype; do
		[[ -n "$point" && "$fstype" == fuse* ]] || continue
		umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null || true
	done <<<"$mounts"
	for pid in $(pids_naming "$dir/"); do
		kill "$pid" 2>/dev/null || true
	done
}

# debian_mirror SUITE: the first Debian mirror URL apt uses for SUITE, or
# $SLUICE_BENCH_MIRROR when set.
debian_mirror() {
	local suite="$1" f
	if [[ -n "${SLUICE_BENCH_MIRROR:-}" ]]; then
		echo "$SLUICE_BENCH_MIRROR"
		return
	fi
	{
		# One-line style: deb [opts] URI SUITE COMPONENTS...
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
			[[ -f "$f" ]] || continue
			awk -v suite="$suite" '$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				if ($(i + 1) == suite) { print $i; exit }
			}' "$f"
		done
		# deb822 style: stanzas with URIs: and Suites:
		for f in /etc/apt/sources.list.d/*.sources; do
			[[ -f "$f" ]] || continue
			awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" } {
				uris = ""; suites = ""; types = ""
				for (i = 1; i <= NF; i++) {
					if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
					if ($i ~ /^Suites:/) { suites = " " $i " "; sub(/Suites:/, "", suites) }
					if ($i ~ /^Types:/) { types = $i }
				}
				if (types ~ /deb( |$)/ && suites ~ (" " suite " ")) { split(uris, u, " "); print u[1]; exit }
			}' "$f"
		done
	} | head -n1
}

# Bump when the way a debootstrap base is built changes; the dir name also
# hashes SUITE and INCLUDE, so stale bases are never reused.
BENCH_BASE_VERSION=1

# bench_base_dir CACHE SUITE INCLUDE: the cache dir of the debootstrap base
# with these inputs (CACHE/vN-HASH; it may not exist yet).
bench_base_dir() {
	echo "$1/v$BENCH_BASE_VERSION-$(echo "$2 $3" | sha256sum | cut -c1-12)"
}

# bench_rootfs_tar DIR SUITE INCLUDE: build DIR/base-rootfs.tar unless it is
# there: debootstrap --variant=minbase --include=INCLUDE SUITE from the
# machine's Debian mirror, without device nodes, apt lists or caches (like
# published base images), as a reproducible tar. Progress goes to stderr.
bench_rootfs_tar() {
	local dir="$1" suite="$2" include="$3"
	local tar="$dir/base-rootfs.tar" mirror build top t0=$SECONDS
	[[ -s "$tar" ]] && return 0
	mkdir -p "$dir"
	mirror="$(debian_mirror "$suite")"
	[[ -n "$mirror" ]] || die "no Debian mirror for $suite in /etc/apt/sources.list*; set SLUICE_BENCH_MIRROR"
	build="$dir/rootfs.build"
	rm -rf "$build"
	log "debootstrap --variant=minbase --include=$include $suite from $mirror (once; cached in $dir)" >&2
	if ! debootstrap --variant=minbase --include="$include" "$suite" "$build" "$mirror" >"$dir/debootstrap.log" 2>&1; then
		tail -n 30 "$dir/debootstrap.log" >&2
		die "debootstrap failed (log: $dir/debootstrap.log)"
	fi
	find "$build/dev" -mindepth 1 -delete
	rm -rf "$build"/var/lib/apt/lists/* "$build"/var/cache/apt/*.bin "$build"/var/cache/apt/archives/*.deb
	mapfile -t top < <(ls -A "$build")
	tar --sort=name --numeric-owner --xattrs --xattrs-include='*' --format=pax \
		--pax-option=delete=atime,delete=ctime \
		-C "$build" -cf "$tar.tmp" "${top[@]}"
	mv "$tar.tmp" "$tar"
	rm -rf "$build"
	log "base rootfs ready in $((SECONDS - t0)) s: $(du -h --apparent-size "$tar" | cut -f1)" >&2
}
