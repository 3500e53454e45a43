"""`ctrappliance oci-hook -- CMD ARGS`: template a hook command from the OCI state and exec it.

The runtime writes the container state (JSON) on stdin; the command gets the
same stdin. Templates: {{id}} {{pid}} {{bundle}} {{rootfs}} {{annotation "KEY"}}.
"""
from __future__ import annotations

import json
import os
import re
import sys

_TEMPLATE = re.compile(r'\{\{\s*(id|pid|bundle|rootfs|annotation\s+"([^"]*)")\s*\}\}')


def render(arg: str, state: dict, rootfs: str) -> str:
    def value(match):
        name = match.group(1)
        if name.startswith("annotation"):
            return (state.get("annotations") or {}).get(match.group(2), "")
        if name == "rootfs":
            return rootfs
        return str(state.get(name, ""))
    return _TEMPLATE.sub(value, arg)


def _rootfs(bundle: str) -> str:
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            path = json.load(f).get("root", {}).get("path", "")
    except (OSError, ValueError):
        return ""
    return path if os.path.isabs(path) else os.path.join(bundle, path)


def run(hook_args: list[str]) -> int:
    args = hook_args[1:] if hook_args[:1] == ["--"] else hook_args
    if not args:
        print("ctrappliance: oci-hook: no hook command given", file=sys.stderr)
        return 1
    raw = sys.stdin.buffer.read()
    try:
        state = json.loads(raw)
    except ValueError as exc:
        print(f"ctrappliance: oci-hook: invalid state on stdin: {exc}", file=sys.stderr)
        return 1
    rootfs = _rootfs(state.get("bundle", ""))
    argv = [render(a, state, rootfs) for a in args]
    read_end, write_end = os.pipe()  # hand the same state to the hook on its stdin
    os.write(write_end, raw)
    os.close(write_end)
    os.dup2(read_end, 0)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"ctrappliance: oci-hook: {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127
