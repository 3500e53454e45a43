"""Where the event loop waits: its longest stalls while GC, unpack and churn run at once.

  python -m bench.loopstall [--seconds 30] [--checkout DIR] [--output FILE]

Starts ctrappliance (this tree, or another checkout) under a probe that times, on the loop's
thread only: the gap between two selector polls (a stall: callbacks running, or the loop
blocked), and inside the metadata database's write()/read() the wait to enter (the lock that a
GC sweep or a snapshot commit in a worker thread holds, then BEGIN) and the exit (COMMIT with
synchronous=FULL: the fsync). Then, for --seconds at once: stress churn (c=4), a loop of `ctr
images import` big (unpack) + `ctr images rm --sync` (GC), and in-process Version calls
(grpcprobe). The daemon's in-process gRPC p50 is measured idle first. Prints one JSON object.
A measuring tool, not a row of the table: the probe patches the daemon's own methods.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import images
from .daemons import ENV, REPO, Target
from .sections import ensure_small_image, python_tool, stress_args

# Run inside the daemon before its main(): patches the selector and the DB, dumps at exit.
PROBE = r'''
import contextlib, json, os, selectors, sys, threading, time
_now = time.perf_counter
_main = threading.main_thread()
_stats = {}
def _record(name, seconds):
    s = _stats.setdefault(name, {"n": 0, "total_ms": 0.0, "max_ms": 0.0, "over_10ms": 0,
                                 "over_50ms": 0, "top_ms": []})
    ms = seconds * 1000
    s["n"] += 1; s["total_ms"] += ms; s["max_ms"] = max(s["max_ms"], ms)
    s["over_10ms"] += ms > 10; s["over_50ms"] += ms > 50
    if ms > 5:
        s["top_ms"] = sorted(s["top_ms"] + [round(ms, 1)], reverse=True)[:8]
_last = [None]
_select = selectors.EpollSelector.select
def select(self, timeout=None):
    if threading.current_thread() is _main:
        if _last[0] is not None:
            _record("loop_stall", _now() - _last[0])
        try:
            return _select(self, timeout)
        finally:
            _last[0] = _now()
    return _select(self, timeout)
selectors.EpollSelector.select = select
from appliance.core.metadata import db as _db
def _timed(name, original):
    @contextlib.contextmanager
    def wrapper(self):
        if threading.current_thread() is not _main:
            with original(self) as conn:
                yield conn
            return
        t0 = _now(); cm = original(self); conn = cm.__enter__(); _record(name + "_enter", _now() - t0)
        try:
            yield conn
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
            return
        t1 = _now(); cm.__exit__(None, None, None); _record(name + "_exit", _now() - t1)
    return wrapper
_db.DB.write = _timed("db_write", _db.DB.write)
_db.DB.read = _timed("db_read", _db.DB.read)
def _dump():
    if "publish" in sys.argv or "oci-hook" in sys.argv:   # shims run this script too
        return
    with open(os.environ["LOOPSTALL_OUT"], "w") as f:
        json.dump(_stats, f)
from appliance import daemon as _daemon   # it leaves with os._exit: no atexit
_exit_now = _daemon._exit_now
def _dump_and_exit(code):
    _dump()
    _exit_now(code)
_daemon._exit_now = _dump_and_exit
'''


def wrapper_script(checkout: Path, path: Path) -> Path:
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(checkout)!r})\n"
                    f"{PROBE}\nfrom appliance.cli import main\nsys.exit(main())\n")
    path.chmod(0o755)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loopstall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--checkout", default=str(REPO), help="the ctrappliance tree to run")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    big = images.image("big")
    images.image("small")
    work = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    out = work / "stats.json"
    ENV["LOOPSTALL_OUT"] = str(out)   # the daemon's environment
    t = Target("ctrappliance", work / "d", binary=str(wrapper_script(Path(args.checkout).resolve(),
                                                                      work / "ctrappliance")))
    result = {"checkout": args.checkout, "seconds": args.seconds}
    try:
        t.start()
        ensure_small_image(t)
        idle = python_tool("bench.grpcprobe", "-a", t.address, "latency", "--rpc", "version",
                           "-c", "2000")
        result["idle_version_p50_ms"] = idle.get("p50_ms")
        stop = time.monotonic() + args.seconds
        cycles = []

        def unpack_and_gc():
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                t.ctr("images", "import", big["path"], timeout=600)
                t.ctr("images", "rm", "--sync", images.BIG_REF, timeout=600)
                cycles.append(time.perf_counter() - t0)
        churn = {}

        def run_churn():
            churn.update(python_tool("appliance.tools.stress", *stress_args(t), "-c", "4",
                                     "-d", str(args.seconds)))
        threads = [threading.Thread(target=unpack_and_gc), threading.Thread(target=run_churn)]
        for th in threads:
            th.start()
        time.sleep(2)
        loaded = python_tool("bench.grpcprobe", "-a", t.address, "latency", "--rpc", "version",
                             "-c", "500")
        for th in threads:
            th.join()
        result.update(loaded_version_p50_ms=loaded.get("p50_ms"),
                      loaded_version_p99_ms=loaded.get("p99_ms"),
                      import_rm_cycles=len(cycles), churn_containers=churn.get("containers"),
                      churn_failures=churn.get("failures"),
                      churn_errors=list(churn.get("errors", {}))[:3])
    finally:
        t.stop()
        t.cleanup()
    result["loop"] = json.loads(out.read_text()) if out.exists() else None
    subprocess.run(["rm", "-rf", str(work)])
    text = json.dumps(result, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
