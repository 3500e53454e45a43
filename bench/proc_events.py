"""Fork/exec/exit times of the processes under some shims, from the kernel's process
events connector (netlink, root only): nothing is traced, so nothing is slowed down
(strace stops the shim and runc at each system call). Timestamps are CLOCK_MONOTONIC
ns, as time.monotonic_ns().
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass, field

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
NLMSG_DONE = 3
FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000
HEADER = 16 + 20  # nlmsghdr + cn_msg


@dataclass
class Proc:
    pid: int
    root: int                                         # the shim it descends from
    forked: int = 0
    execs: list = field(default_factory=list)         # (ns, argv)
    exited: int = 0
    process_spec: bytes = b""                         # runc exec's --process file


class ProcEvents:
    """Records every process descending from `roots` (pids) while running."""

    def __init__(self, roots):
        self.roots = set(roots)
        self.procs: dict[int, Proc] = {}
        self._owner = {r: r for r in self.roots}      # tgid -> root
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind((0, CN_IDX_PROC))
        self._listen(PROC_CN_MCAST_LISTEN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _listen(self, op: int) -> None:
        msg = struct.pack("=IIIIHHI", CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0, op)
        self._sock.send(struct.pack("=IHHII", 16 + len(msg), NLMSG_DONE, 0, 0, os.getpid())
                        + msg)

    def _run(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # ENOBUFS: events lost; go on
                continue
            what, _, ns = struct.unpack_from("=IIQ", data, HEADER)
            a, b, c, d = struct.unpack_from("=4I", data, HEADER + 16)
            if what == FORK and b in self._owner and c == d:
                self._owner[d] = self._owner[b]
                self.procs[d] = Proc(d, self._owner[b], forked=ns)
            elif what == EXEC and b in self.procs:
                try:
                    with open(f"/proc/{a}/cmdline", "rb") as f:
                        argv = f.read().split(b"\0")[:-1]
                except OSError:
                    argv = []
                argv = [x.decode(errors="replace") for x in argv]
                self.procs[b].execs.append((ns, argv))
                if "--process" in argv[:-1]:  # runc exec: what the shim gave it
                    try:
                        with open(argv[argv.index("--process") + 1], "rb") as f:
                            self.procs[b].process_spec = f.read()
                    except OSError:
                        pass
            elif what == EXIT and a == b and a in self.procs:
                self.procs[a].exited = ns

    def stop(self) -> None:
        self._stop = True
        self._thread.join()
        try:
            self._listen(PROC_CN_MCAST_IGNORE)
        finally:
            self._sock.close()

    def runc_exec(self, root: int, start: int, end: int):
        """(runc exec's execve, its exit, the command's execve, the command's exit) for the
        `runc ... exec ...` under `root` begun in [start, end]; None if not seen whole."""
        runc = command = None
        for p in list(self.procs.values()):
            if p.root != root:
                continue
            for ns, argv in list(p.execs):
                if not start <= ns <= end:
                    continue
                if argv and argv[0].endswith("runc") and "exec" in argv:
                    runc = (ns, p.exited)
                elif not (argv and (argv[0].endswith("runc") or argv[1:2] == ["init"])):
                    command = (ns, p.exited)  # the exec'd command (argv may be gone)
        if runc is None or command is None or not runc[1] or not command[1]:
            return None
        return (*runc, *command)
