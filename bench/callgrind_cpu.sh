#!/bin/bash
# User-space instructions of our daemon (all its threads) under callgrind: counted, not
# timed, so A/B comparisons hold on a loaded machine (they differ by ±2 % between runs).
#   bench/callgrind_cpu.sh rpc [TREE]         per in-process Version / Containers.List call
#                                             (bench.grpcprobe, 350 calls each, with deadline)
#   bench/callgrind_cpu.sh lifecycle [TREE]   per `ctr run --rm busybox /bin/true` (RUNS=5 runs)
# TREE: another source tree to run instead of this one (e.g. `git archive` of a commit plus
# appliance/_proto and the built extensions), put first on PYTHONPATH.
# KEEP=DIR: copy the callgrind profiles there (for callgrind_annotate --inclusive=yes).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:?rpc or lifecycle}; TREE=${2:-}
W=$(mktemp -d /var/tmp/callgrind-cpu-XXXXXX)
printf 'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n  path = "%s/opt"\n' "$W" > "$W/c.toml"
PYTHONPATH=$TREE valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/cg.%p" \
    "$REPO/.venv/bin/python" "$REPO/.venv/bin/ctrappliance" --config "$W/c.toml" \
    --root "$W/root" --state "$W/state" --address "$W/s.sock" > "$W/log" 2>&1 &
VP=$!
trap 'kill $VP 2>/dev/null || true; wait $VP 2>/dev/null || true; rm -rf "$W"' EXIT
for _ in $(seq 1 900); do ctr --address "$W/s.sock" version >/dev/null 2>&1 && break; sleep 0.2; done
measure() {  # name, command...
    local name=$1; shift
    callgrind_control -z $VP >/dev/null; callgrind_control -i on $VP >/dev/null
    "$@"
    callgrind_control -i off $VP >/dev/null; callgrind_control -d "$name" $VP >/dev/null 2>&1
}
cd "$REPO"
if [ "$MODE" = rpc ]; then
    for rpc in version containers; do
        .venv/bin/python -m bench.grpcprobe -a "$W/s.sock" -n bench latency --rpc $rpc -c 20 >/dev/null
        measure $rpc .venv/bin/python -m bench.grpcprobe -a "$W/s.sock" -n bench latency \
            --rpc $rpc -c 300 >/dev/null   # + 50 warm-up calls: 350
    done
    N=350
else
    . bench/ctr_run.sh   # busybox imported; run NAME
    run warm; sleep 2
    N=${RUNS:-5}
    lifecycles() { for i in $(seq 1 $N); do run cg-$i; done; sleep 2; }
    measure lifecycle lifecycles
fi
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$W"/cg.*.[0-9]* "$KEEP"/; fi
for f in "$W"/cg.*.[0-9]*; do
    echo "$(grep -m1 '^desc: Trigger' "$f" | sed 's/.*dump //'): $(grep -m1 '^totals' "$f" | awk -v n=$N '{printf "%.0f", $2/n}') instructions each"
done
