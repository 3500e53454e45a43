# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled hot loops of the layer-apply path; `appliance._core_py` is the pure twin."""


cpdef object clean_entry_name(str name):
    """A tar entry name as a clean relative path, or None if it would leave the root."""
    cdef list parts = []
    cdef str part
    for part in name.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)
