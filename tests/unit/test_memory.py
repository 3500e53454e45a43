"""Memory: what the daemon hands back to the kernel."""
import mmap
import os

from appliance.process import memory


def _rss_kib(path: str) -> int:
    total, current = 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and ":" not in first:
                current = line.rstrip("\n").split(maxsplit=5)[-1].strip()
            elif line.startswith("Rss:") and current == path:
                total += int(line.split()[1])
    return total


def test_read_only_data_of_a_mapped_file_is_paged_out(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(4 << 20))
    with open(blob, "rb") as f, mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ) as data:
        assert sum(data[i] for i in range(0, len(data), 4096)) >= 0  # fault every page in
        assert _rss_kib(str(blob)) == 4096
        assert memory.release_startup_pages(str(blob)) == 4 << 20
        assert _rss_kib(str(blob)) == 0
        assert data[:16] == blob.read_bytes()[:16]  # still readable: it faults back in


def test_the_executables_code_is_left_alone():
    exe = os.readlink("/proc/self/exe")
    memory.release_startup_pages()
    with open("/proc/self/maps") as maps:
        code = [l for l in maps if l.rstrip().endswith(exe) and l.split()[1] == "r-xp"]
    assert code and _rss_kib(exe) > 0


def test_trim_with_collect_runs_a_full_collection_and_leaves_nothing_frozen():
    """The collection that empties the free lists runs with every object frozen (cheap in
    a big heap): afterwards nothing may stay frozen, or later collections miss it."""
    import gc
    from appliance.process import memory
    before = gc.get_stats()[2]["collections"]
    memory.trim(collect=True)
    assert gc.get_stats()[2]["collections"] == before + 1
    assert gc.get_freeze_count() == 0
