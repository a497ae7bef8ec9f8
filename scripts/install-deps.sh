#!/usr/bin/env bash
# install-deps.sh: install what sluice's tests, demo and benchmarks need on a
# fresh Debian 12 machine, as root. Idempotent: it does nothing (and prints
# one line) when everything is already there, runs `apt-get update` at most
# once, and only when a package is missing.
#
# Usage: scripts/install-deps.sh [-v]
#   -v   print one line per package and per Go tool
#
# Environment:
#   SLUICE_TOOLS_BIN  where Go tools are installed (default: REPO/bin/tools;
#                     the Makefile passes its TOOLS_BIN)
set -euo pipefail

verbose=0
[[ "${1:-}" == "-v" ]] && verbose=1

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_bin="${SLUICE_TOOLS_BIN:-$repo_root/bin/tools}"

# Debian packages, each with what needs it.
apt_packages=(
	e2fsprogs      # mke2fs, e2fsck, debugfs: ext4 checks, bench floor
	docker-registry # distribution 2.8 registry for tests, demo, bench
	skopeo         # push OCI layouts to the registry
	umoci          # build small OCI images without internet
	busybox-static # rootfs for test and demo images
	debootstrap    # realistic large images for benchmarks
	tar
	gzip
	time           # GNU /usr/bin/time -v: peak RSS in benchmarks
	fio            # block-level benchmarks (ioengine=nbd)
	libnbd-bin     # nbdinfo, nbdcopy, nbdfuse (portable attach)
	python3-libnbd # nbdsh (nbdserver tests)
	nbdkit         # reference NBD server
	nbd-server     # reference NBD server
	qemu-utils     # qemu-nbd, qemu-io; qemu-img: test/vm's copy-on-write guest disks
	util-linux     # losetup, mount
	jq
	curl
	containerd     # containerd 1.6 for snapshotter and pull tests
	runc
	fuse3          # fusermount3 for nbdfuse (portable attach)
	systemd        # systemd-analyze verify: the node's unit files (test/install)
	qemu-system-x86   # test/vm: boots Debian's kernel (TCG) for the kernel nbd tests
	linux-image-amd64 # test/vm: the guest kernel and its nbd module (lands in /boot; not booted here)
	cpio           # test/internal/qemuvm checks its initramfs archives with it
)

# Go tools, as "name=module/path@version[ go-install-flags]" (name = the
# binary go install makes, optionally below a subdirectory of $tools_bin).
# Add entries here when tests need them; they go into $tools_bin.
# containerd 2.x is not packaged: its daemon, shim and ctr go into
# $tools_bin/containerd2/, apart from Debian's containerd 1.6 (test/agent runs
# against both; the 2.x daemon finds its own shim by PATH, so the harness puts
# that directory first on the daemon's PATH).
containerd2="github.com/containerd/containerd/v2/cmd"
containerd2_version=v2.4.2
containerd2_flags="-tags=no_btrfs,no_devmapper"
go_tools=(
	"crictl=sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0" # CRI client for test/agent, test/install, test/vm's node guest and the demo
	"containerd2/containerd=$containerd2/containerd@$containerd2_version $containerd2_flags"
	"containerd2/containerd-shim-runc-v2=$containerd2/containerd-shim-runc-v2@$containerd2_version $containerd2_flags"
	"containerd2/ctr=$containerd2/ctr@$containerd2_version $containerd2_flags"
)

die() {
	echo "install-deps: ERROR: $*" >&2
	exit 1
}
say() {
	if ((verbose)); then echo "install-deps: $*"; fi
}

[[ "$(id -u)" == 0 ]] || die "must run as root (apt-get install)"
command -v apt-get >/dev/null || die "apt-get not found: this script targets Debian 12"

installed() {
	[[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# candidate prints the version apt would install, or "(none)".
candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; found=1} END {if (!found) print "(none)"}'
}

missing=()
for pkg in "${apt_packages[@]}"; do
	if installed "$pkg"; then
		say "$pkg: installed ($(dpkg-query -W -f='${Version}' "$pkg"))"
	else
		missing+=("$pkg")
	fi
done

if ((${#missing[@]})); then
	echo "install-deps: missing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	log="$(mktemp /tmp/install-deps.XXXXXX.log)"
	# Third-party sources configured on a machine may be unreachable; apt then
	# warns but still refreshes Debian's lists, so the exit code is not
	# trusted here: apt-cache policy below is the real check.
	if ! apt-get update -qq >"$log" 2>&1; then
		echo "install-deps: warning: apt-get update reported errors (continuing; see $log)" >&2
	fi
	unavailable=()
	for pkg in "${missing[@]}"; do
		cand="$(candidate "$pkg")"
		if [[ "$cand" == "(none)" ]]; then
			unavailable+=("$pkg")
		else
			say "$pkg: will install $cand"
		fi
	done
	((${#unavailable[@]} == 0)) || die "no install candidate for: ${unavailable[*]} (apt-cache policy shows none; check /etc/apt/sources.list*)"
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
		tail -n 40 "$log" >&2
		die "apt-get install failed (full log: $log)"
	fi
	for pkg in "${missing[@]}"; do
		installed "$pkg" || die "$pkg still not installed after apt-get install (log: $log)"
	done
	rm -f "$log"
	echo "install-deps: installed ${missing[*]}"
fi

# Commands the scripts call directly; a package can be installed yet broken.
for cmd in mke2fs docker-registry skopeo umoci busybox debootstrap tar gzip \
	/usr/bin/time fio nbdinfo nbdfuse nbdkit nbd-server qemu-nbd qemu-img losetup jq curl systemd-analyze \
	qemu-system-x86_64 cpio; do
	command -v "$cmd" >/dev/null || die "command $cmd not found although its package is installed"
done
compgen -G "/boot/vmlinuz-*" >/dev/null || die "no /boot/vmlinuz-* although linux-image-amd64 is installed"

if ((${#go_tools[@]})); then
	command -v go >/dev/null || die "go not found (needed for Go tools)"
	mkdir -p "$tools_bin"
	for entry in "${go_tools[@]}"; do
		name="${entry%%=*}"
		read -r module flags <<<"${entry#*=}"
		if [[ -x "$tools_bin/$name" ]]; then
			say "go tool $name: present"
			continue
		fi
		gobin="$(dirname "$tools_bin/$name")"
		echo "install-deps: go install ${flags:+$flags }$module -> $gobin"
		# shellcheck disable=SC2086 # flags are words
		GOBIN="$gobin" CGO_ENABLED=1 go install $flags "$module" || die "go install $module failed"
	done
fi

if ((${#missing[@]} == 0)); then
	echo "install-deps: all ${#apt_packages[@]} Debian packages present"
fi
