"""Memory the daemon hands back.

glibc malloc: the daemon's worker threads (unpack, decompress, removals) would each get a
malloc arena kept for the process's life; two arenas and a trim after big operations hand
that memory back (RSS after a workload 72 → ~55 MiB, same speed).

CPython's free lists: a full garbage collection empties them. A mass of short-lived objects
(a 300,000-entry layer's paths: ~100 MiB) is freed into pymalloc's 1 MiB arenas, but the
few thousand of them kept on free lists for reuse can pin nearly every arena, which
malloc_trim cannot return (RSS after such a layer 124 → 28 MiB with the collection).

The executable's read-only data: a compiled (Nuitka) daemon carries its modules' constants
in the binary, and start-up reads nearly all of it once (≈ 9 MiB of clean file pages that
stay mapped and count in RSS and in the cgroup). After boot it is paged out; the few pages
used again later fault back in.
"""
from __future__ import annotations

import gc

from .._mountcall import ffi, lib

ARENA_MAX = 2


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Call before threads start: arenas already created are not merged."""
    return lib.mallopt(lib.M_ARENA_MAX, arenas) == 1


def trim(collect: bool = False) -> None:
    """Return free heap pages to the kernel (cheap: microseconds to a millisecond).
    collect: empty CPython's free lists first, after work that freed very many Python
    objects. A full collection does that; over every object of a daemon it holds the GIL
    for 40-120 ms, so it runs over none (all frozen meanwhile): ~10 ms, the same RSS after
    a 300,000-entry layer (25 MiB; 28 with the whole collection, 65 without). Cyclic garbage
    is left to the automatic collections."""
    if collect:
        gc.freeze()
        try:
            gc.collect()
        finally:
            gc.unfreeze()
    lib.malloc_trim(0)


def release_startup_pages(path: str | None = None) -> int:
    """Page out the read-only data mappings (not the code) of `path`, by default the
    executable; returns the bytes advised (0 when /proc cannot be read, e.g. out of fds)."""
    import os
    released = 0
    try:
        path = path or os.readlink("/proc/self/exe")  # sys.executable isn't the Nuitka binary
        maps = open("/proc/self/maps")
    except OSError:
        return released
    with maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[1] != "r--p" or fields[5].strip() != path:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if lib.madvise(ffi.cast("void *", start), end - start, lib.MADV_PAGEOUT) == 0:
                released += end - start
    return released
