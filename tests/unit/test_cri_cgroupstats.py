"""cri.cgroupstats: CRI stats figures from cgroup files and /proc/<pid>/net/dev.

The v1 files are recorded on this machine (a pod's cgroup_parent under cgroup v1). This
machine has no v2 hierarchy with controllers, so the v2 files are fixtures written in the
kernel's documented format (Documentation/admin-guide/cgroup-v2.rst: cpu.stat, memory.current,
memory.max, memory.stat), not recorded."""
import os

from appliance.cri import cgroupstats

V1_STAT = """cache 0
rss 0
pgfault 0
inactive_file 0
hierarchical_memory_limit 9223372036854771712
total_cache 352256
total_rss 172032
total_pgfault 2037138
total_pgmajfault 4
total_inactive_anon 159744
total_inactive_file 102400
total_active_file 249856
"""
V2_CPU = """usage_usec 1234567
user_usec 1000000
system_usec 234567
nr_periods 0
nr_throttled 0
throttled_usec 0
"""
V2_STAT = """anon 4096000
file 1048576
kernel_stack 16384
inactive_anon 0
active_anon 4096000
inactive_file 524288
active_file 524288
pgfault 3300
pgmajfault 7
"""


def test_v1_figures_as_containerd_reports_them():
    u = cgroupstats.parse_v1("55878253458\n", "2039808\n", "9223372036854771712\n", V1_STAT)
    assert u.cpu_ns == 55878253458
    assert u.memory_usage == 2039808
    assert u.working_set == 2039808 - 102400        # usage minus total_inactive_file
    assert u.available == 0                         # no limit
    assert (u.rss, u.page_faults, u.major_page_faults) == (172032, 2037138, 4)


def test_v1_available_under_a_limit():
    u = cgroupstats.parse_v1("1", "2039808", str(64 << 20), V1_STAT)
    assert u.available == (64 << 20) - u.working_set


def test_v1_inactive_file_above_usage_leaves_usage():
    u = cgroupstats.parse_v1("1", "1000", "9223372036854771712", "total_inactive_file 5000\n")
    assert u.working_set == 1000


def test_v1_gone_cgroup():
    assert cgroupstats.parse_v1(None, None, None, None) is None


def test_v2_figures():
    u = cgroupstats.parse_v2(V2_CPU, "6291456\n", "max\n", V2_STAT)
    assert u.cpu_ns == 1234567 * 1000
    assert u.memory_usage == 6291456
    assert u.working_set == 6291456 - 524288
    assert u.available == 0
    assert (u.rss, u.page_faults, u.major_page_faults) == (4096000, 3300, 7)
    limited = cgroupstats.parse_v2(V2_CPU, "6291456\n", "16777216\n", V2_STAT)
    assert limited.available == 16777216 - limited.working_set
    assert cgroupstats.parse_v2(None, None, None, None) is None


def test_v2_dirs(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    pod = tmp_path / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (pod / "cpu.stat").write_text(V2_CPU)
    (pod / "memory.current").write_text("6291456\n")
    (pod / "memory.max").write_text("max\n")
    (pod / "memory.stat").write_text(V2_STAT)
    (pod / "cgroup.procs").write_text("10\n11\n12\n")
    dirs = cgroupstats.dirs_of_path("/kubepods/pod1", str(tmp_path))
    assert dirs == {"": str(pod)}
    assert cgroupstats.read_usage(dirs).cpu_ns == 1234567000
    assert cgroupstats.process_count(dirs) == 3


def test_dirs_of_this_process_v1():
    dirs = cgroupstats.dirs_of_pid(os.getpid())
    assert os.path.isfile(os.path.join(dirs["cpuacct"], "cpuacct.usage"))
    usage = cgroupstats.read_usage(dirs)
    assert usage.cpu_ns > 0 and usage.memory_usage > 0
    assert cgroupstats.process_count(dirs) >= 1
    assert cgroupstats.dirs_of_pid(2 ** 22 + 1) == {}


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     560       8    0    0    0     0          0         0      560       8    0    0    0     0       0          0
  eth0:    4242      31    2    0    0     0          0         0     1370      17    3    0    0     0       0          0
"""


def test_net_dev():
    assert cgroupstats.parse_net_dev(NET_DEV) == {"lo": (560, 0, 560, 0),
                                                  "eth0": (4242, 2, 1370, 3)}
    assert "lo" in cgroupstats.net_dev(os.getpid())
