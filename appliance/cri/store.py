"""The CRI's in-memory view of its sandboxes and containers, and what keeps it across restarts.

The source of truth is the daemon's container store (namespace `k8s.io`): each sandbox and
container is a containerd container labelled `io.cri-containerd.kind`, with its CRI metadata
(config, netns, IP) in an extension, as containerd's CRI keeps them (`ctr -n k8s.io c ls`
shows them). A container's status (times, exit code) is a JSON file in its root dir
(`<root>/containers/<id>/status`), rewritten at each change, as containerd does. The view is
rebuilt from both at start and kept current by task events, so lists read no database.
"""
from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field

from google.protobuf import any_pb2

from ..errdefs import AlreadyExists

KIND_LABEL = "io.cri-containerd.kind"
SANDBOX_METADATA = "io.cri-containerd.sandbox.metadata"
CONTAINER_METADATA = "io.cri-containerd.container.metadata"
SANDBOX_METADATA_URL = "github.com/containerd/cri/pkg/store/sandbox/Metadata"
CONTAINER_METADATA_URL = "github.com/containerd/cri/pkg/store/container/Metadata"

# CRI enum values (runtime.v1 and v1alpha2 agree)
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
CREATED, RUNNING, EXITED, UNKNOWN = 0, 1, 2, 3
UNKNOWN_EXIT_CODE = 255


@dataclass
class Sandbox:
    id: str
    name: str
    config: object                      # runtime.v1 PodSandboxConfig
    runtime_handler: str
    root: str                           # <root>/sandboxes/<id>: hostname, hosts, resolv.conf
    state_dir: str                      # <state>/sandboxes/<id>: shm
    image: str = ""
    netns_path: str = ""
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    cni_result: dict | None = None
    created_at: int = 0
    pid: int = 0
    state: int = SANDBOX_NOTREADY
    hostname: str = ""
    process_label: str | None = None    # its spec's selinuxLabel (None: not read yet)
    answers: dict = field(default_factory=dict, repr=False, compare=False)   # see answer()

    @property
    def hostname_path(self) -> str:
        return os.path.join(self.root, "hostname")

    @property
    def hosts_path(self) -> str:
        return os.path.join(self.root, "hosts")

    @property
    def resolv_path(self) -> str:
        return os.path.join(self.root, "resolv.conf")

    @property
    def shm_path(self) -> str:
        return os.path.join(self.state_dir, "shm")

    def metadata(self) -> any_pb2.Any:
        doc = {"Version": "v1", "Metadata": {
            "ID": self.id, "Name": self.name, "Config": _b64(self.config),
            "NetNSPath": self.netns_path, "IP": self.ip, "AdditionalIPs": self.additional_ips,
            "RuntimeHandler": self.runtime_handler, "CNIResult": self.cni_result,
            "Hostname": self.hostname, "CreatedAt": self.created_at}}
        return any_pb2.Any(type_url=SANDBOX_METADATA_URL, value=json.dumps(doc).encode())


@dataclass
class Status:
    pid: int = 0
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    removing: bool = False

    @property
    def state(self) -> int:
        if self.finished_at:
            return EXITED
        if self.started_at:
            return RUNNING
        return CREATED

    def to_json(self) -> bytes:
        return json.dumps({"Version": "v1", "Status": {
            "Pid": self.pid, "CreatedAt": self.created_at, "StartedAt": self.started_at,
            "FinishedAt": self.finished_at, "ExitCode": self.exit_code, "Reason": self.reason,
            "Message": self.message}}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Status":
        s = json.loads(data)["Status"]
        return cls(s["Pid"], s["CreatedAt"], s["StartedAt"], s["FinishedAt"], s["ExitCode"],
                   s["Reason"], s["Message"])


@dataclass
class Container:
    id: str
    name: str
    sandbox_id: str
    config: object                      # runtime.v1 ContainerConfig
    image_id: str                       # config digest
    image_ref: str                      # repo@sha256:<manifest>, as ContainerStatus shows
    image_name: str
    log_path: str
    root: str                           # <root>/containers/<id>: status, volumes
    state_dir: str                      # <state>/containers/<id>: io FIFOs
    stop_signal: str = ""               # the image's StopSignal ("" = SIGTERM)
    status: Status = field(default_factory=Status)
    io: object = None                   # logs.ContainerIO while the task runs
    stopped: object = None              # asyncio.Event set when the exit is handled
    resources: dict | None = None       # ContainerStatus.resources (cri.resources), from the spec
    mounts: list | None = None          # its snapshot's mounts, from CreateContainer
    answers: dict = field(default_factory=dict, repr=False, compare=False)   # see answer()

    def metadata(self) -> any_pb2.Any:
        doc = {"Version": "v1", "Metadata": {
            "ID": self.id, "Name": self.name, "SandboxID": self.sandbox_id,
            "Config": _b64(self.config), "ImageRef": self.image_id,
            "ImageRepoDigest": self.image_ref, "ImageName": self.image_name,
            "LogPath": self.log_path, "StopSignal": self.stop_signal}}
        return any_pb2.Any(type_url=CONTAINER_METADATA_URL, value=json.dumps(doc).encode())

    def save_status(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        path = os.path.join(self.root, "status")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self.status.to_json())
        os.replace(tmp, path)


def answer(record, kind: str, key, build):
    """The record's answer message of `kind` (a list item, a status), built again only when
    `key` (what the answer shows of the record's changing state) differs from the last one's:
    kubelet's relist asks for the same answers every second. An answer is shared between
    calls: callers copy it (into a response) and never modify it."""
    hit = record.answers.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    message = build()
    record.answers[kind] = (key, message)
    return message


def _b64(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def sandbox_from_metadata(ext: any_pb2.Any, config_type, root: str, state: str) -> Sandbox:
    m = json.loads(ext.value)["Metadata"]
    config = config_type.FromString(base64.b64decode(m["Config"]))
    return Sandbox(m["ID"], m["Name"], config, m["RuntimeHandler"],
                   os.path.join(root, "sandboxes", m["ID"]),
                   os.path.join(state, "sandboxes", m["ID"]), netns_path=m["NetNSPath"],
                   ip=m["IP"], additional_ips=m.get("AdditionalIPs") or [],
                   cni_result=m.get("CNIResult"), created_at=m.get("CreatedAt", 0),
                   hostname=m.get("Hostname", ""))


def container_from_metadata(ext: any_pb2.Any, config_type, root: str, state: str) -> Container:
    m = json.loads(ext.value)["Metadata"]
    config = config_type.FromString(base64.b64decode(m["Config"]))
    c = Container(m["ID"], m["Name"], m["SandboxID"], config, m["ImageRef"],
                  m["ImageRepoDigest"], m["ImageName"], m["LogPath"],
                  os.path.join(root, "containers", m["ID"]),
                  os.path.join(state, "containers", m["ID"]), m.get("StopSignal", ""))
    try:
        with open(os.path.join(c.root, "status"), "rb") as f:
            c.status = Status.from_json(f.read())
    except (OSError, ValueError, KeyError):
        c.status = Status(created_at=time.time_ns(), finished_at=time.time_ns(),
                          exit_code=UNKNOWN_EXIT_CODE, reason="Unknown")
    return c


class Names:
    """Name reservations (containerd's registrar): one id per name."""

    def __init__(self, what: str):
        self.what = what
        self.by_name: dict[str, str] = {}

    def reserve(self, name: str, key: str) -> None:
        owner = self.by_name.get(name)
        if owner is not None and owner != key:
            raise AlreadyExists(f'failed to reserve {self.what} name "{name}": '
                                f'name "{name}" is reserved for "{owner}"')
        self.by_name[name] = key

    def release(self, name: str) -> None:
        self.by_name.pop(name, None)


class Store:
    """id -> record, with containerd's truncated-id lookup (a unique prefix will do)."""

    def __init__(self, what: str):
        self.what = what
        self.items: dict = {}

    def add(self, item) -> None:
        self.items[item.id] = item

    def remove(self, item_id: str) -> None:
        self.items.pop(item_id, None)

    def find(self, id_or_prefix: str):
        """The record, or None (an ambiguous or empty prefix finds nothing)."""
        if not id_or_prefix:
            return None
        item = self.items.get(id_or_prefix)
        if item is not None:
            return item
        matches = [v for k, v in self.items.items() if k.startswith(id_or_prefix)]
        return matches[0] if len(matches) == 1 else None

    def list(self) -> list:
        return list(self.items.values())
