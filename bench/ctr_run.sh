# Sourced by bench/callgrind_cpu.sh and bench/lifecycle_sys.sh (in the repository, with the
# daemon listening on $W/s.sock): imports busybox into namespace `bench` and defines
# `run NAME`, one `ctr run --rm busybox /bin/true`.
.venv/bin/python -c "from bench import images; images.image('small')"   # built if missing
ctr --address "$W/s.sock" -n bench images import \
    "${BENCH_CACHE:-/tmp/ctrappliance-bench}/images/busybox.tar" >/dev/null
REF=$(ctr --address "$W/s.sock" -n bench images ls -q | head -1)
run() { ctr --address "$W/s.sock" -n bench run --rm --runc-root "$W/runc" --fifo-dir "$W/fifo" \
            "$REF" "$1" /bin/true; }
