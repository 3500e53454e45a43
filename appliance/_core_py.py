"""Pure-Python twin of `appliance._core`: same functions, same results.

Tests run both on the same inputs; the daemon imports the compiled one.
"""


def clean_entry_name(name: str):
    """A tar entry name as a clean relative path, or None if it would leave the root.

    Leading "/" and "./" are dropped and "." components removed; any ".." that
    climbs above the root makes the entry hostile.
    """
    parts = []
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
