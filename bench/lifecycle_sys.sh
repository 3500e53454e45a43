#!/bin/bash
# Kernel side of a `ctr run --rm busybox /bin/true` in our daemon (its threads, not its
# children: shims, mount helpers), per run: context switches, page faults and CPU time
# (`perf stat --no-inherit`, 20 runs), then the syscalls by name (`strace -c` of every thread
# that exists after the warm-up runs, 10 runs: strace adds context switches, so apart).
#   bench/lifecycle_sys.sh [TREE]   TREE: another source tree first on PYTHONPATH
# NOFILE=SOFT:HARD starts the daemon with that open files limit (soft < hard: the daemon
# raises it, its children get the soft one back).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TREE=${1:-}
W=$(mktemp -d /var/tmp/lifecycle-sys-XXXXXX)
printf 'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n  path = "%s/opt"\n' "$W" > "$W/c.toml"
PYTHONPATH=$TREE ${NOFILE:+prlimit --nofile=$NOFILE --} "$REPO/.venv/bin/python" "$REPO/.venv/bin/ctrappliance" --config "$W/c.toml" \
    --root "$W/root" --state "$W/state" --address "$W/s.sock" > "$W/log" 2>&1 &
DP=$!
trap 'kill $DP 2>/dev/null || true; wait $DP 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 1 300); do ctr --address "$W/s.sock" version >/dev/null 2>&1 && break; sleep 0.2; done
cd "$REPO"
. bench/ctr_run.sh   # busybox imported; run NAME
for i in 1 2 3; do run warm-$i; done; sleep 2
lifecycles() { for i in $(seq 1 "$1"); do run "$2-$i"; done; sleep 2; }
perf stat --no-inherit -x, -e context-switches,page-faults,task-clock -p $DP -o "$W/perf" &
PP=$!; sleep 0.5
lifecycles 20 perf
kill -INT $PP; wait $PP || true
awk -F, '/^[0-9]/ {printf "%s per run: %.1f\n", $3, $1/20}' "$W/perf"
strace -c -q $(ls /proc/$DP/task | sed "s/^/-p /") -o "$W/strace" &
SP=$!; sleep 1
lifecycles 10 strace
kill -INT $SP; wait $SP || true
echo "syscalls per run (strace -c, 10 runs):"
awk '/^ *[0-9]/ && $NF != "total" {printf "  %-20s %6.1f\n", $NF, $4/10}' "$W/strace" \
    | sort -k2 -nr | head -25
awk '$NF == "total" {printf "  %-20s %6.1f\n", "total", $4/10}' "$W/strace"
