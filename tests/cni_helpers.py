"""Private CNI networks for tests, with Debian's plugins (/usr/lib/cni): a unique bridge name
and subnet, private conf and host-local dirs, TCP probes into network namespaces, and a check
that nothing stays behind (bridge ports, veths, iptables rules and chains, IP allocations,
netns pins). Never `ip netns` (DESIGN.md D3)."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

PLUGINS = "/usr/lib/cni"
SHARED_CHAINS = re.compile(r"CNI-HOSTPORT-(DNAT|SNAT|MASQ|SETMARK)$")   # portmap's, shared


def _run(*argv, check=True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60).stdout


def free_subnet() -> str:
    """A /24 in 10.200-249.x.0 that no route on the host uses."""
    routes = _run("ip", "-4", "route", "show", "table", "all")
    while True:
        subnet = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24"
        if subnet.rsplit(".", 1)[0] + "." not in routes:
            return subnet


class TestNetwork:
    """One bridge network: `conflist()` for a conf dir, `cleanup()` deletes the bridge."""
    __test__ = False

    def __init__(self, workdir: Path, name: str = "ctrtest", cni_version: str = "1.0.0",
                 portmap: bool = True, bandwidth: bool = False):
        self.workdir = Path(workdir)
        self.name = name
        self.cni_version = cni_version
        self.portmap = portmap
        self.bandwidth = bandwidth
        self.bridge = f"ctn{uuid.uuid4().hex[:10]}"     # at most 15 characters
        self.subnet = free_subnet()
        self.gateway = self.subnet.rsplit(".", 1)[0] + ".1"
        self.conf_dir = self.workdir / "net.d"
        self.ipam_dir = self.workdir / "ipam"
        self.conf_dir.mkdir(parents=True, exist_ok=True)

    def conflist(self, **bridge_extra) -> dict:
        bridge = {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                  "ipam": {"type": "host-local", "dataDir": str(self.ipam_dir),
                           "ranges": [[{"subnet": self.subnet}]],
                           "routes": [{"dst": "0.0.0.0/0"}]}}
        bridge.update(bridge_extra)
        plugins = [bridge]
        if self.portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        if self.bandwidth:
            plugins.append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": plugins}

    def write(self, conf: dict | None = None, filename: str = "10-ctrtest.conflist") -> Path:
        path = self.conf_dir / filename
        path.write_text(json.dumps(conf or self.conflist()))
        return path

    def ports(self) -> list[str]:
        """The interfaces attached to the bridge (pods' host-side veths)."""
        try:
            return os.listdir(f"/sys/class/net/{self.bridge}/brif")
        except FileNotFoundError:
            return []

    def allocations(self) -> list[str]:
        """host-local's reservations (one file per allocated IP)."""
        found = []
        for root, _, files in os.walk(self.ipam_dir):
            found += [f for f in files if f != "lock" and not f.startswith("last_reserved_ip")]
        return found

    def cleanup(self) -> None:
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            _run("ip", "link", "del", self.bridge, check=False)


def iptables_lines() -> list[str]:
    return (_run("iptables-save", "-t", "nat") + _run("iptables-save", "-t", "filter")) \
        .splitlines()


def chains_of(sandbox_ids) -> set[str]:
    """The per-pod CNI chains the rules naming these sandboxes jump to (to check, after DEL,
    that the chains are gone as well as the rules)."""
    chains = set()
    for line in iptables_lines():
        if any(i in line for i in sandbox_ids):
            m = re.search(r"-j (CNI-\S+)", line)
            if m and not SHARED_CHAINS.match(m.group(1)):
                chains.add(m.group(1))
    return chains


def leftovers(network: TestNetwork, sandbox_ids, chains=(), veths=(), netns_dir=None) -> list:
    """Everything the pods left: [] when clean."""
    found = [f"bridge port {p}" for p in network.ports()]
    found += [f"veth {v}" for v in veths if os.path.exists(f"/sys/class/net/{v}")]
    found += [f"IP allocation {a}" for a in network.allocations()]
    for line in iptables_lines():
        if any(i in line for i in sandbox_ids) or any(
                re.search(rf"(^:|-j |-A ){re.escape(c)}\b", line) for c in chains):
            found.append(f"iptables: {line}")
    if netns_dir is not None and os.path.isdir(netns_dir):
        found += [f"netns pin {n}" for n in os.listdir(netns_dir)]
    return found


def host_veths(result: dict) -> list[str]:
    """The host-side veths in a PodNetwork.result (go-cni's Result)."""
    return [name for name, i in result["Interfaces"].items()
            if name.startswith("veth") and not i["Sandbox"]]


LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8); print("ready", flush=True)
while True:
    c, peer = s.accept(); c.sendall(sys.argv[2].encode()); c.close()
"""

CLIENT = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
            print(c.recv(100).decode()); break
    except OSError as e:
        if time.monotonic() > deadline: print("failed:", e); break
        time.sleep(0.1)
"""


class Listener:
    """A TCP server inside a network namespace (nsenter) that answers `greeting`."""

    def __init__(self, netns: str, port: int, greeting: str):
        self.proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c",
                                      LISTENER, str(port), greeting],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def connect(ip: str, port: int, netns: str | None = None, timeout: float = 20.0) -> str:
    """What a TCP connection to ip:port reads, from the host or from inside `netns`."""
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    out = subprocess.run(prefix + [sys.executable, "-c", CLIENT, ip, str(port), str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 30)
    return out.stdout.strip()


# containerd's documented `conf_template` (docs/cri/config.md) with a portmap that shows
# .PodCIDR too; BRIDGE is replaced by a test's bridge name
CONF_TEMPLATE = """{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "BRIDGE",
      "isGateway": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
        {{- range $i, $range := .PodCIDRRanges}}{{if $i}},
            {{end}}[{"subnet": "{{$range}}"}]
        {{- end}}
        ],
        "routes": [
        {{- range $i, $route := .Routes}}{{if $i}},
            {{end}}{"dst": "{{$route}}"}
        {{- end}}
        ]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "cidr": "{{.PodCIDR}}"}
  ]
}
"""


@contextmanager
def scratch_network(prefix: str, **options):
    """A written TestNetwork in a temporary dir, its bridge deleted on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        network = TestNetwork(Path(d), **options)
        network.write()
        try:
            yield network
        finally:
            network.cleanup()
