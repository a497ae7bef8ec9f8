#!/usr/bin/env bash
# install-node.sh: enable image streaming on a node, as root. Idempotent: a
# second run changes nothing. Works as a cloud node-pool startup script.
#
# Usage: install-node.sh [--dry-run] [--uninstall] [--prefix DIR]
#                        [--containerd-config FILE] [--no-start]
#                        [--trust-key FILE]... [--bin-dir DIR]
#
# It installs sluice and sluiced (into /usr/local/bin), sluiced's config
# /etc/sluice/config.toml (from the sample, only when there is none), a
# systemd unit for sluiced (ordered before containerd, restarted on failure,
# stopped without killing what running containers read through) with a
# drop-in that makes containerd want it, and loads the nbd module with
# max_part=0 (persisted in /etc/modules-load.d and /etc/modprobe.d). It
# sets containerd's config up through `sluiced install-config` (version 2
# for containerd 1.6/1.7, 3 and 4 for 2.x; a backup is kept), restarts
# containerd and waits until both daemons answer. Without systemd as init it
# says so and starts the daemons itself (pid files and logs below
# /run/sluice and /var/log/sluice).
#
#   --dry-run              print every change (diffs of text files), write nothing
#   --uninstall            stop sluiced, restore containerd's config from its
#                          backup, restart containerd, remove the binaries, unit
#                          and module files; keeps /etc/sluice and sluiced's state
#   --prefix DIR           install below DIR (for tests): every file written, and
#                          every path written into one, is below DIR; units are
#                          not enabled, no module is loaded, the daemons are
#                          started directly
#   --containerd-config F  containerd's config (default /etc/containerd/config.toml;
#                          containerd's default config is written there if none)
#   --no-start             change files only: no module loading, no (re)start
#   --trust-key FILE       trust artifacts signed by this public key (cosign.pub
#                          format): copied to /etc/sluice/keys/, and sluiced's
#                          [trust] gets policy = "signed"; repeatable
#   --bin-dir DIR          where sluice and sluiced are (default: bin/ beside
#                          this script, as in a release bundle, or the
#                          repository's bin/ from `make build`)
#
# Environment: CONTAINERD, the containerd command (default: containerd in PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
	echo "install-node: ERROR: $*" >&2
	exit 1
}
say() { echo "install-node: $*"; }
usage() {
	local line
	while IFS= read -r line; do
		[[ "$line" != "set -euo"* ]] || break
		[[ "$line" != "#!"* ]] || continue
		line="${line#\#}"
		echo "${line# }"
	done <"${BASH_SOURCE[0]}"
}

dry_run=0 uninstall=0 no_start=0 prefix="" bin_dir=""
containerd_config=/etc/containerd/config.toml
trust_keys=()
while (($#)); do
	case "$1" in
	--dry-run) dry_run=1 ;;
	--uninstall) uninstall=1 ;;
	--no-start) no_start=1 ;;
	--prefix | --containerd-config | --trust-key | --bin-dir)
		(($# >= 2)) || die "$1 needs a value"
		case "$1" in
		--prefix) prefix="${2%/}" ;;
		--containerd-config) containerd_config="$2" ;;
		--trust-key) trust_keys+=("$2") ;;
		--bin-dir) bin_dir="$2" ;;
		esac
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown argument $1 (--help lists them)" ;;
	esac
	shift
done
[[ -z "$prefix" || "$prefix" == /* ]] || die "--prefix: want an absolute path, got $prefix"
[[ "$containerd_config" == /* ]] || die "--containerd-config: want an absolute path, got $containerd_config"
((dry_run)) || [[ "$(id -u)" == 0 ]] || die "must run as root (or with --dry-run)"
((!uninstall || ${#trust_keys[@]} == 0)) || die "--trust-key: not with --uninstall"
containerd_cmd="${CONTAINERD:-containerd}"
dry=()
((dry_run)) && dry=(--dry-run)

# The files this script installs, from a release bundle (install-node.sh,
# node/, config.sample.toml, bin/) or from the repository.
node_dir="$here/node"
sample="$here/config.sample.toml"
[[ -f "$sample" ]] || sample="$here/../cmd/sluiced/config.sample.toml"
if [[ -z "$bin_dir" ]]; then
	bin_dir="$here/bin"
	[[ -x "$bin_dir/sluiced" ]] || bin_dir="$here/../bin"
fi

# Where everything goes (below --prefix).
bin="$prefix/usr/local/bin"
etc_sluice="$prefix/etc/sluice"
config="$etc_sluice/config.toml"
keys_dir="$etc_sluice/keys"
unit="$prefix/etc/systemd/system/sluiced.service"
dropin="$prefix/etc/systemd/system/containerd.service.d/10-sluice.conf"
modules_load="$prefix/etc/modules-load.d/sluice.conf"
modprobe_conf="$prefix/etc/modprobe.d/sluice.conf"
cconfig="$prefix$containerd_config"
log_dir="$prefix/var/log/sluice"
run_dir="$prefix/run/sluice"

# Whether systemd manages the daemons: systemd is init, and no --prefix.
if [[ -n "$prefix" ]]; then
	systemd=0
	why_direct="--prefix given: the units are written but not enabled"
elif [[ -d /run/systemd/system ]]; then
	systemd=1
else
	systemd=0
	why_direct="no systemd on this machine (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown))"
fi

changed_sluiced=0    # sluiced's binary, config or unit changed
changed_containerd=0 # containerd's config or drop-in changed

# put SRC DST MODE: install a file (atomically: a temporary file renamed
# over DST, so a running binary is not overwritten in place); text files
# show a diff on a dry run. Returns 0 if DST changed (would change).
put() {
	local src="$1" dst="$2" mode="$3"
	if [[ -f "$dst" ]] && cmp -s "$src" "$dst"; then
		say "unchanged: $dst"
		return 1
	fi
	if ((dry_run)); then
		local old="$dst"
		if [[ -f "$dst" ]]; then say "would replace: $dst"; else say "would create: $dst (mode $mode)"; fi
		[[ -f "$dst" ]] || old=/dev/null
		if grep -Iq . "$src"; then diff -u --label "$dst" --label "$dst" "$old" "$src" || true; fi
		return 0
	fi
	mkdir -p "$(dirname "$dst")"
	install -m "$mode" "$src" "$dst.sluice-tmp.$$"
	mv -f "$dst.sluice-tmp.$$" "$dst"
	say "installed: $dst"
	return 0
}

# put_text TEMPLATE DST MODE: put a text file from this script's node/
# directory, with @PREFIX@ replaced by --prefix and @CONTAINERD_CONFIG@ by
# containerd's config.
put_text() {
	local tmp rc=0 content
	content="$(<"$1")"
	content="${content//@PREFIX@/$prefix}"
	tmp="$(mktemp)"
	printf '%s\n' "${content//@CONTAINERD_CONFIG@/$cconfig}" >"$tmp"
	put "$tmp" "$2" "$3" || rc=$?
	rm -f "$tmp"
	return "$rc"
}

# remove FILE: remove a file this script installed.
remove() {
	if [[ ! -e "$1" ]]; then
		say "absent: $1"
	elif ((dry_run)); then
		say "would remove: $1"
	else
		rm -f "$1"
		say "removed: $1"
	fi
}

# pid_of NAME: the PID in NAME's pid file if that process still runs NAME.
pid_of() {
	local pid
	pid="$(cat "$run_dir/$1.pid" 2>/dev/null)" || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$1" || return 1
	echo "$pid"
}

# stop NAME: stop a daemon this script started (SIGTERM by PID, 30 s).
stop() {
	local pid i
	pid="$(pid_of "$1")" || return 0
	if ((dry_run)); then
		say "would stop $1 (PID $pid)"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && die "$1 (PID $pid) did not stop within 30 s of SIGTERM"
	rm -f "$run_dir/$1.pid"
	say "stopped $1 (PID $pid)"
}

# start NAME ARGS...: start a daemon in the background, in its own session,
# logging to $log_dir/NAME.log.
start() {
	local name="$1" pid
	shift
	if ((dry_run)); then
		say "would start: $*"
		return 0
	fi
	mkdir -p "$log_dir" "$run_dir"
	rm -f "$run_dir/$name.pid"
	# The daemon writes its own PID (setsid may fork): a shell that execs it.
	# shellcheck disable=SC2016 # expanded by that shell
	setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$run_dir/$name.pid" "$@" \
		>>"$log_dir/$name.log" 2>&1 </dev/null &
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s "$run_dir/$name.pid" ]] && break
		sleep 0.1
	done
	pid="$(cat "$run_dir/$name.pid" 2>/dev/null)" || die "$name did not start (log $log_dir/$name.log)"
	say "started $name (PID $pid, log $log_dir/$name.log)"
}

# configure SLUICED ARGS...: sluiced install-config ARGS (with --dry-run on a
# dry run), its report shown; returns 0 if a file changed (would change).
configure() {
	local sluiced="$1" out
	shift
	out="$("$sluiced" install-config "$@" "${dry[@]}")" || die "sluiced install-config $* failed"
	[[ -z "$out" ]] || echo "$out"
	[[ "$out" == *": changed:"* || "$out" == *": would change:"* ]]
}

# ready ARGS...: sluiced ready with this node's config (exit status: 0
# ready, 2 sluiced does not answer, 3 containerd answers without sluice, 4
# containerd does not answer).
ready() {
	"$bin/sluiced" ready --config "$config" "$@"
}

load_nbd() {
	local mp out
	if [[ -d /sys/module/nbd ]]; then
		mp="$(cat /sys/module/nbd/parameters/max_part 2>/dev/null || echo '?')"
		if [[ "$mp" == 0 ]]; then
			say "nbd module loaded (max_part=0)"
		else
			say "warning: nbd is loaded with max_part=$mp; max_part=0 applies once it is reloaded (next boot)"
		fi
	elif command -v modinfo >/dev/null && ! modinfo nbd >/dev/null 2>&1; then
		say "no nbd module on this kernel: sluiced uses its portable attacher (nbdfuse + loop)"
	elif [[ -n "$prefix" ]]; then
		say "the nbd module is not loaded: --prefix loads no module (a scratch install changes nothing outside $prefix)"
	elif ((dry_run)); then
		say "would run: modprobe nbd max_part=0"
	elif out="$(modprobe nbd max_part=0 2>&1)"; then
		say "loaded the nbd module (max_part=0)"
	else
		say "no nbd module on this kernel ($out): sluiced uses its portable attacher (nbdfuse + loop)"
	fi
}

install_node() {
	[[ -x "$bin_dir/sluiced" && -x "$bin_dir/sluice" ]] ||
		die "no sluice and sluiced in $bin_dir (--bin-dir; \`make build\` writes bin/)"
	[[ -d "$node_dir" && -f "$sample" ]] || die "the unit files ($node_dir) or the sample config ($sample) are missing beside this script"
	local key
	for key in "${trust_keys[@]}"; do
		[[ -f "$key" ]] || die "--trust-key $key: no such file"
	done
	((dry_run)) && say "dry run: nothing is written"

	put "$bin_dir/sluice" "$bin/sluice" 0755 || true
	put "$bin_dir/sluiced" "$bin/sluiced" 0755 && changed_sluiced=1
	# The binary that edits configs: the new one (the installed one on a
	# real run, which is the same).
	local sluiced="$bin/sluiced"
	((dry_run)) && sluiced="$bin_dir/sluiced"

	if [[ -f "$config" ]]; then
		say "keeping: $config"
	else
		put "$sample" "$config" 0644 && changed_sluiced=1
	fi
	local keys=()
	for key in "${trust_keys[@]}"; do
		put "$key" "$keys_dir/$(basename "$key")" 0644 && changed_sluiced=1
		keys+=(--trust-key "$keys_dir/$(basename "$key")")
	done
	if ((${#keys[@]})); then
		if [[ -f "$config" ]]; then
			configure "$sluiced" --config "$config" "${keys[@]}" && changed_sluiced=1
		else
			say "would set [trust] policy = \"signed\" and keys in $config"
		fi
	fi

	put_text "$node_dir/sluiced.service" "$unit" 0644 && changed_sluiced=1
	put_text "$node_dir/containerd-sluice.conf" "$dropin" 0644 && changed_containerd=1
	put_text "$node_dir/modules-load.conf" "$modules_load" 0644 || true
	put_text "$node_dir/modprobe.conf" "$modprobe_conf" 0644 || true

	# containerd's config: containerd's default when there is none.
	local read_config="$config"
	[[ -f "$config" ]] || read_config="$sample"
	if [[ ! -f "$cconfig" ]]; then
		command -v "$containerd_cmd" >/dev/null || die "no $cconfig, and no $containerd_cmd to write its default config"
		if ((dry_run)); then
			say "would write containerd's default config ($containerd_cmd config default) to $cconfig, then set sluice up in it"
		else
			mkdir -p "$(dirname "$cconfig")"
			"$containerd_cmd" config default >"$cconfig.sluice-tmp.$$"
			mv -f "$cconfig.sluice-tmp.$$" "$cconfig"
			say "wrote containerd's default config to $cconfig"
			changed_containerd=1
		fi
	fi
	if [[ -f "$cconfig" ]] && configure "$sluiced" --config "$read_config" --containerd-config "$cconfig"; then
		changed_containerd=1
		# The containerd here must read what was written.
		if ((!dry_run)) && command -v "$containerd_cmd" >/dev/null && ! out="$("$containerd_cmd" --config "$cconfig" config dump 2>&1 >/dev/null)"; then
			"$sluiced" install-config --containerd-config "$cconfig" --uninstall --force >/dev/null
			die "$containerd_cmd does not read the config sluice set up ($out); $cconfig is restored"
		fi
	fi

	if ((no_start)); then
		say "files only (--no-start): load nbd, start sluiced, then restart containerd to use it"
		return 0
	fi
	load_nbd
	if ((systemd)); then
		start_systemd
	else
		start_direct
	fi
}

start_systemd() {
	if ((dry_run)); then
		say "would run: systemctl daemon-reload; systemctl enable sluiced.service;" \
			"systemctl $( ((changed_sluiced)) && echo restart || echo start) sluiced.service;" \
			"systemctl restart containerd.service (if its config changed or it lacks sluice)"
		return 0
	fi
	systemctl daemon-reload
	systemctl enable sluiced.service
	if ((changed_sluiced)); then
		systemctl restart sluiced.service
	else
		systemctl start sluiced.service
	fi
	local rc=0
	ready --containerd-config "$cconfig" --timeout 2s >/dev/null 2>&1 || rc=$?
	if ((changed_containerd || rc != 0)); then
		say "restarting containerd"
		systemctl restart containerd.service
	fi
	ready --containerd-config "$cconfig" --timeout 120s
	systemctl --no-pager --lines=0 status sluiced.service containerd.service | grep -E '^●|Active:' || true
}

start_direct() {
	say "$why_direct: starting the daemons directly (they do not come back after a reboot)"
	local pid rc
	if pid="$(pid_of sluiced)" && ((!changed_sluiced)); then
		say "sluiced runs (PID $pid)"
	else
		stop sluiced
		start sluiced "$bin/sluiced" --config "$config"
	fi
	if ((dry_run)); then
		if pid="$(pid_of containerd)" && ((!changed_containerd)); then
			say "containerd runs (PID $pid)"
		else
			say "would (re)start $containerd_cmd --config $cconfig (a containerd this script did not start must be restarted by hand)"
		fi
		return 0
	fi
	ready --timeout 60s
	rc=0
	ready --containerd-config "$cconfig" --timeout 2s >/dev/null 2>&1 || rc=$?
	if pid="$(pid_of containerd)"; then
		if ((changed_containerd || rc != 0)); then
			stop containerd
			start containerd "$containerd_cmd" --config "$cconfig"
		else
			say "containerd runs (PID $pid)"
		fi
	elif ((rc == 0 || rc == 3)); then
		die "a containerd this script did not start answers on the address $cconfig names$( ((rc == 3)) && echo ", without sluice"): restart it so that it reads $cconfig"
	else
		command -v "$containerd_cmd" >/dev/null || die "no $containerd_cmd to start"
		start containerd "$containerd_cmd" --config "$cconfig"
	fi
	ready --containerd-config "$cconfig" --timeout 60s
}

uninstall_node() {
	((dry_run)) && say "dry run: nothing is written"
	local sluiced="$bin/sluiced" pid
	[[ -x "$sluiced" ]] || sluiced="$bin_dir/sluiced"
	if [[ -f "$cconfig" ]]; then
		[[ -x "$sluiced" ]] || die "no sluiced ($bin/sluiced, $bin_dir/sluiced) to restore $cconfig with"
		"$sluiced" install-config --containerd-config "$cconfig" --uninstall --dry-run >/dev/null ||
			die "$cconfig cannot be restored (see above); nothing was changed"
	fi
	# The drop-in goes first: its ExecStartPre would set sluice up again
	# when containerd restarts.
	remove "$dropin"
	if ((systemd && !dry_run)); then systemctl daemon-reload; fi
	if [[ -f "$cconfig" ]]; then
		configure "$sluiced" --containerd-config "$cconfig" --uninstall && changed_containerd=1
	fi
	if ((!no_start)); then
		if ((systemd)); then
			if ((dry_run)); then
				say "would run: systemctl restart containerd.service; systemctl disable --now sluiced.service"
			else
				((changed_containerd)) && systemctl restart containerd.service
				systemctl disable --now sluiced.service 2>/dev/null || true
			fi
		else
			if pid="$(pid_of containerd)"; then
				if ((changed_containerd)); then
					stop containerd
					start containerd "$containerd_cmd" --config "$cconfig"
				fi
			elif ((changed_containerd)); then
				say "restart containerd so that it reads $cconfig"
			fi
			stop sluiced
		fi
	fi
	remove "$unit"
	remove "$modules_load"
	remove "$modprobe_conf"
	remove "$bin/sluice"
	remove "$bin/sluiced"
	if ((systemd && !dry_run)); then systemctl daemon-reload; fi
	say "kept $etc_sluice and sluiced's state and cache (see $config: root, cache.dir): remove them once no container uses an image mount"
}

if ((uninstall)); then
	uninstall_node
else
	install_node
fi
