"""A pod's network namespace, pinned by a bind mount as containerd pins it
(`<base>/cni-<uuid4>`), so that it outlives every process in it and the daemon itself.

The namespace is made by a short-lived thread: unshare(CLONE_NEWNET) moves only that thread
into a new namespace, which is bind-mounted from /proc/thread-self/ns/net onto the pin; the
thread then ends, and the daemon's own threads never change namespace. `ip netns` is not used:
it turns /run/netns into a bind mount of itself (DESIGN.md D3).
"""
from __future__ import annotations

import errno
import os
import threading
import uuid

from ..mount import MNT_DETACH, MS_BIND, mount, unmount
from .._mountcall import ffi, lib

CLONE_NEWNET = 0x40000000     # linux/sched.h: the same value on every architecture
DEFAULT_BASE_DIR = "/var/run/netns"
CREATE_SECONDS = 10.0


def is_netns(path: str) -> bool:
    """True when `path` is a namespace file (a live pin), not a plain or missing file."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev   # nsfs's one sb
    except FileNotFoundError:
        return False


def _pin_new_netns(pin: str) -> None:
    """In the calling thread, which must be a thread of its own: a new netns, bound to `pin`."""
    if lib.unshare(CLONE_NEWNET) != 0:
        err = ffi.errno
        raise OSError(err, f"unshare network namespace: {os.strerror(err)}")
    mount("/proc/thread-self/ns/net", pin, "none", MS_BIND)


class NetNS:
    """A network namespace pinned at `path`."""

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"NetNS({self.path!r})"

    @classmethod
    def create(cls, base_dir: str = DEFAULT_BASE_DIR) -> "NetNS":
        """A new network namespace pinned at `<base_dir>/cni-<uuid4>` (with `lo` down)."""
        os.makedirs(base_dir, mode=0o755, exist_ok=True)
        path = os.path.join(base_dir, f"cni-{uuid.uuid4()}")
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
        failure: list[BaseException] = []

        def run():
            try:
                _pin_new_netns(path)
            except BaseException as exc:   # reported to the caller below
                failure.append(exc)

        thread = threading.Thread(target=run, name="netns-create", daemon=True)
        thread.start()
        thread.join(CREATE_SECONDS)
        ns = cls(path)
        if thread.is_alive() or failure:
            ns.remove()
            if failure:
                raise OSError(failure[0].errno if isinstance(failure[0], OSError) else errno.EIO,
                              f"failed to create network namespace {path}: {failure[0]}")
            raise TimeoutError(f"creating network namespace {path} took over "
                               f"{CREATE_SECONDS:.0f}s")
        return ns

    @classmethod
    def at(cls, path: str) -> "NetNS":
        """The pin at `path`, made earlier (by a daemon before a restart)."""
        return cls(path)

    def closed(self) -> bool:
        """True when the namespace is gone: no pin, or a pin that is not a namespace any more
        (an unmounted leftover file, which is removed as containerd does)."""
        if is_netns(self.path):
            return False
        self._unlink()
        return True

    def remove(self) -> None:
        """Unmount and delete the pin (the namespace ends with its last user); idempotent."""
        try:
            unmount(self.path, MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        self._unlink()

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
