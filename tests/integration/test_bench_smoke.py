"""A few seconds of the benchmark harness and the stress tool, so they cannot rot."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon import REPO
from reference import Containerd

pytestmark = pytest.mark.integration
STRESS = str(REPO / ".venv" / "bin" / "ctrappliance-stress")
NS = "stress-smoke"  # its own cgroup parent (/sys/fs/cgroup/*/stress-smoke), removed afterwards
sys.path.insert(0, str(REPO))
from bench import images  # noqa: E402
from appliance.tools.stress import shim_pids  # noqa: E402


@pytest.fixture
def short_tmp():  # unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep
    path = Path(tempfile.mkdtemp(prefix="bn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_bench_quick_version_section_against_ctrappliance(short_tmp):
    tmp_path = short_tmp
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--sections", "version",
                        "--targets", "ctrappliance", "--workdir", str(tmp_path / "work"),
                        "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["metric"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    version = rows["ctr_version"]["ctrappliance"]
    assert version["n"] == 10 and 0 < version["min"] <= version["median"] < 2000
    assert rows["ctr_version"]["containerd"] is None  # not a target of this run
    assert rows["rss_after"]["ctrappliance"]["median"] > 5  # MiB of a live daemon
    assert "| `ctr version` | ms |" in out.with_suffix(".md").read_text()
    assert not list((tmp_path / "work").glob("*/workload/*/*.sock"))  # daemon stopped, cleaned


def test_bench_runs_another_checkout_as_a_target(short_tmp):
    """`--targets NAME=DIR`: a second ctrappliance tree without a venv of its own (here this
    one's package again, through the wrapper the bench writes) is a column of its own, and
    ratios are last over first."""
    other = short_tmp / "checkout"
    other.mkdir()
    (other / "appliance").symlink_to(REPO / "appliance")
    out = short_tmp / "results"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--sections", "version",
                        "--targets", f"ctrappliance,other={other}", "--workdir",
                        str(short_tmp / "work"), "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["info"]["targets"] == ["ctrappliance", "other"]
    assert data["info"]["checkouts"]["other"] == str(out.parent / "ctrappliance-other")
    row = {row["metric"]: row for row in data["rows"]}["ctr_version"]
    assert row["other"]["n"] == row["ctrappliance"]["n"] == 10
    assert row["ratio"] == row["other"]["median"] / row["ctrappliance"]["median"]
    assert "| measurement | unit | ctrappliance | other | ratio | target |" in \
        out.with_suffix(".md").read_text()
    assert not list((short_tmp / "work").glob("*/workload/*/*.sock"))


def test_bench_quick_lifecycle_section_against_ctrappliance(short_tmp):
    """Daemon CPU per `ctr run --rm` lifecycle, idle and with both CPUs busy; without a
    Nuitka build its rows say so."""
    out = short_tmp / "results"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--sections", "lifecycle",
                        "--targets", "ctrappliance", "--nuitka-bin", str(short_tmp / "none"),
                        "--workdir", str(short_tmp / "work"), "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {row["metric"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    for metric in ("lifecycle_cpu_venv", "lifecycle_rate_venv", "churn_loaded_venv"):
        ours = rows[metric]["ctrappliance"]
        assert ours["n"] == 2 and ours["min"] > 0, (metric, ours)
    assert rows["lifecycle_cpu_venv"]["ctrappliance"]["median"] < 1000  # ms per lifecycle
    assert "no Nuitka build" in rows["lifecycle_cpu_nuitka"]["ctrappliance_status"]
    pids = json.loads(re.search(r"load pids (\[[0-9, ]+\])", r.stderr)[1])
    assert len(pids) == 2
    for pid in pids:  # the load was stopped (or its pid reused by something else)
        assert not os.path.exists(f"/proc/{pid}") or "sha256sum" not in \
            Path(f"/proc/{pid}/cmdline").read_text()
    assert not list((short_tmp / "work").glob("*/lifecycle/*/*.sock"))


def stress(daemon, *args, timeout=60):
    r = subprocess.run([STRESS, "-a", daemon.address, "-n", NS, "--json",
                        "--runc-root", str(daemon.workdir / "runc"), *args],
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else r.stderr


def exercise_stress(daemon):
    daemon.ctr("images", "import", images.image("small")["path"], namespace=NS)
    code, churn = stress(daemon, "-c", "2", "-d", "2s", "--exec")
    assert code == 0, churn
    assert churn["containers"] > 0 and churn["failures"] == 0, churn
    assert churn["exec"]["execs"] > 0 and churn["exec"]["failures"] == 0, churn
    code, density = stress(daemon, "density", "--count", "2")
    assert code == 0, density
    assert density["running"] == 2 and density["shims"] == 2, density
    assert 0 < density["shim_pss_mib_per_container"] < density["shim_rss_mib_per_container"]
    # nothing left behind: every container, task and snapshot the tool made is gone
    assert daemon.ctr("containers", "ls", "-q", namespace=NS).stdout == ""
    assert daemon.ctr("tasks", "ls", "-q", namespace=NS).stdout == ""
    snapshots = daemon.ctr("snapshots", "ls", namespace=NS).stdout.splitlines()
    assert len(snapshots) == 2, snapshots  # header + the image's one layer


def remove_cgroups():
    for path in Path("/sys/fs/cgroup").glob(f"*/{NS}"):
        subprocess.run(["rmdir", str(path)], capture_output=True)


def test_stress_tool_against_containerd():
    cd = Containerd()
    try:
        cd.start()
        exercise_stress(cd)
    finally:
        cd.cleanup()
        remove_cgroups()


def test_stress_tool_against_ctrappliance(daemon):
    try:
        exercise_stress(daemon)
    finally:
        daemon.cleanup()
        remove_cgroups()


@pytest.mark.slow
def test_stress_soak_8_workers_no_failures_no_leaks(daemon):
    """8 workers × 10 min (STRESS_SOAK_SECONDS to change) with 0 failures, nothing leaked."""
    seconds = os.environ.get("STRESS_SOAK_SECONDS", "600")
    daemon.ctr("images", "import", images.image("small")["path"], namespace=NS)
    try:
        code, churn = stress(daemon, "-c", "8", "-d", seconds, "--exec",
                             timeout=int(seconds) + 300)
        assert code == 0 and churn["failures"] == 0, churn
        assert churn["containers"] > 0 and churn["exec"]["failures"] == 0, churn
        assert daemon.ctr("containers", "ls", "-q", namespace=NS).stdout == ""
        assert len(daemon.ctr("snapshots", "ls", namespace=NS).stdout.splitlines()) == 2
        assert shim_pids(daemon.address) == []
        with open("/proc/self/mounts") as f:
            leaked = [line.split()[1] for line in f if str(daemon.workdir) in line.split()[1]]
        assert leaked == []
        assert [p for p in Path("/sys/fs/cgroup").glob(f"*/{NS}/*") if p.is_dir()] == []
    finally:
        daemon.cleanup()
        remove_cgroups()
