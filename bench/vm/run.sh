#!/usr/bin/env bash
# bench/vm/run.sh: fio on /dev/nbdN (the kernel attacher, sluiced's block
# cache warm) against a loop device over the same ext4 image, in a QEMU
# guest booting Debian's kernel (test/vm BenchmarkFioInVM, which runs
# test/vm/guest's BenchmarkFio there). Emulation slows both devices, so
# only the ratios mean anything. Prints the figures; they are also kept in
# /var/cache/sluice-test/vm/last-report-fio.txt.
#
# Usage: bench/vm/run.sh   (root; SLUICE_FIO_RUNTIME=SECONDS per fio run, default 5)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
go test -run '^$' -bench '^BenchmarkFioInVM$' -benchtime 1x -timeout 45m ./test/vm
cache="${SLUICE_VM_CACHE:-/var/cache/sluice-test/vm}"
cat "$cache/last-report-fio.txt"
