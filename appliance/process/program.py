"""The path of this program as other processes must run it (shims' -publish-binary).

Interpreted, that is the console script; compiled by Nuitka, the binary itself
(sys.argv[0] may be a bare name found through PATH). A onefile build runs as a
bootstrap plus a child unpacked under $TMPDIR that is deleted when we exit, while
shims outlive us: they must get the onefile binary, the child's parent.
"""
import os
import sys


def path() -> str:
    # Nuitka sets __compiled__ in the modules it compiles; the entry point always is, while
    # our modules ship as bytecode (packaging/nuitka_bytecode.py) and lack it
    compiled = getattr(sys.modules.get("__main__"), "__compiled__", None)
    if compiled is None:
        argv0 = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        return argv0 if os.path.isfile(argv0) else sys.executable
    if compiled.onefile and os.environ.get("NUITKA_ONEFILE_PARENT"):
        return os.readlink(f"/proc/{os.environ['NUITKA_ONEFILE_PARENT']}/exe")
    return os.readlink("/proc/self/exe")


def helper_dirs() -> list[str]:
    """Where bundled helper binaries (the runc shim, ctr) are: beside us and in bin/."""
    here = os.path.dirname(path())
    return [here, os.path.join(here, "bin")]
