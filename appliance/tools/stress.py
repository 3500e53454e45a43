"""ctrappliance-stress: containerd-stress's workload over gRPC, for containerd and ctrappliance alike.

  ctrappliance-stress -a SOCK -c 4 -d 60s -i localhost/busybox:latest [--exec] [--json]
      each worker loops: create container (lease, snapshot) → create task → start → wait → delete
  ctrappliance-stress -a SOCK density --count 20
      starts N `sleep` containers and reports the shims' PSS/RSS per container

Talks to the daemon with the generated stubs only (no ctr, no Go client). The image
must already be in the daemon (e.g. `ctr images import`), unpacked for --snapshotter.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import sys
import threading
import time
import uuid

import grpc
from google.protobuf import any_pb2

from .._proto.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from .._proto.containerd.api.services.content.v1 import content_pb2, content_pb2_grpc
from .._proto.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from .._proto.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from .._proto.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from .._proto.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from .._proto.containerd.runtime.v2.runc.options import oci_pb2

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
RPC_TIMEOUT = 60.0


class Client:
    """The handful of containerd RPCs the stress workload needs, in one namespace."""

    def __init__(self, address: str, namespace: str, snapshotter: str, runtime: str,
                 runc_root: str | None):
        self.channel = grpc.insecure_channel("unix://" + address.removeprefix("unix://"))
        self.metadata = (("containerd-namespace", namespace),)
        self.namespace = namespace
        self.snapshotter = snapshotter
        self.runtime = containers_pb2.Container.Runtime(name=runtime)
        if runc_root:
            # containerd's typeurl registry names it without the type.googleapis.com/ prefix
            self.runtime.options.CopyFrom(any_pb2.Any(
                type_url="containerd.runc.v1.Options",
                value=oci_pb2.Options(root=runc_root).SerializeToString()))
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.content = content_pb2_grpc.ContentStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)

    def call(self, method, request, timeout=RPC_TIMEOUT, metadata=None):
        return method(request, metadata=metadata or self.metadata, timeout=timeout)

    def read_blob(self, digest: str) -> bytes:
        chunks = self.content.Read(content_pb2.ReadContentRequest(digest=digest),
                                   metadata=self.metadata, timeout=RPC_TIMEOUT)
        return b"".join(chunk.data for chunk in chunks)

    def resolve(self, name: str) -> dict:
        """Image name → its config (Env, WorkingDir) and the chain id of its top layer."""
        target = self.call(self.images.Get, images_pb2.GetImageRequest(name=name)).image.target
        digest, media_type = target.digest, target.media_type
        if media_type in INDEX_TYPES:
            index = json.loads(self.read_blob(digest))
            digest = _pick_platform(index["manifests"])["digest"]
        manifest = json.loads(self.read_blob(digest))
        config = json.loads(self.read_blob(manifest["config"]["digest"]))
        return {"name": name, "config": config.get("config") or {},
                "chain_id": chain_id(config["rootfs"]["diff_ids"])}

    # --- one container's life -------------------------------------------------

    def create_container(self, cid: str, image: dict, args: list[str]):
        """Snapshot + container under a short lease, as containerd's Go client does."""
        lease = self.call(self.leases.Create, leases_pb2.CreateRequest(
            id=f"stress-{cid}", labels={"containerd.io/gc.expire": _expiry(3600)})).lease
        leased = self.metadata + (("containerd-lease", lease.id),)
        try:
            mounts = self.call(self.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=self.snapshotter, key=cid, parent=image["chain_id"]),
                metadata=leased).mounts
            container = containers_pb2.Container(
                id=cid, image=image["name"], runtime=self.runtime,
                spec=any_pb2.Any(type_url=SPEC_TYPE,
                                 value=json.dumps(oci_spec(cid, self.namespace, image, args)).encode()),
                snapshotter=self.snapshotter, snapshot_key=cid)
            self.call(self.containers.Create, containers_pb2.CreateContainerRequest(
                container=container), metadata=leased)
        finally:
            self.call(self.leases.Delete, leases_pb2.DeleteRequest(id=lease.id))
        return mounts

    def run_task(self, cid: str, mounts) -> int:
        """Create, start and wait for the task (null IO); returns its exit status."""
        self.call(self.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts))
        waiting = self.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid),
                                         metadata=self.metadata, timeout=RPC_TIMEOUT)
        self.call(self.tasks.Start, tasks_pb2.StartRequest(container_id=cid))
        return waiting.result().exit_status

    def remove(self, cid: str, kill=False):
        """Delete task, container and snapshot; missing pieces are fine (cleanup after errors)."""
        steps = []
        if kill:
            steps.append((self.tasks.Kill, tasks_pb2.KillRequest(container_id=cid, signal=9, all=True)))
        steps += [(self.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=cid)),
                  (self.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid)),
                  (self.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(
                      snapshotter=self.snapshotter, key=cid))]
        for method, request in steps:
            for _ in range(50):  # Delete of a task that is still exiting answers FAILED_PRECONDITION
                try:
                    self.call(method, request)
                    if method is self.tasks.Kill:
                        time.sleep(0.05)
                    break
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        time.sleep(0.05)
                        continue
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    break

    def exec_true(self, cid: str, exec_id: str, image: dict) -> int:
        process = oci_spec(cid, self.namespace, image, ["/bin/true"])["process"]
        self.call(self.tasks.Exec, tasks_pb2.ExecProcessRequest(
            container_id=cid, exec_id=exec_id,
            spec=any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps(process).encode())))
        waiting = self.tasks.Wait.future(tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id),
                                         metadata=self.metadata, timeout=RPC_TIMEOUT)
        self.call(self.tasks.Start, tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id))
        status = waiting.result().exit_status
        self.call(self.tasks.DeleteProcess, tasks_pb2.DeleteProcessRequest(
            container_id=cid, exec_id=exec_id))
        return status


def chain_id(diff_ids: list[str]) -> str:
    chain = diff_ids[0]
    for diff in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
    return chain


def _pick_platform(manifests):
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    for m in manifests:
        p = m.get("platform") or {}
        if p.get("os") == "linux" and p.get("architecture") == arch:
            return m
    return manifests[0]


def _expiry(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def oci_spec(cid: str, namespace: str, image: dict, args: list[str]) -> dict:
    """What containerd's default unix spec gives runc, with the image's env and cwd."""
    from ..cri.spec import DEFAULT_PATH, oci_default_spec
    config = image["config"]
    spec = oci_default_spec(f"/{namespace}/{cid}")
    spec["process"].update(args=args, env=config.get("Env") or [f"PATH={DEFAULT_PATH}"],
                           cwd=config.get("WorkingDir") or "/")
    return spec


# --- churn -----------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.failures = 0
        self.errors = collections.Counter()

    def ok(self):
        with self.lock:
            self.count += 1

    def fail(self, error: str):
        with self.lock:
            self.failures += 1
            self.errors[error] += 1


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


def churn_worker(client: Client, image: dict, worker: int, deadline: float, tally: Tally):
    n = 0
    while time.monotonic() < deadline:
        cid = f"stress-{worker}-{n}-{uuid.uuid4().hex[:6]}"
        n += 1
        try:
            mounts = client.create_container(cid, image, ["/bin/true"])
            status = client.run_task(cid, mounts)
            client.remove(cid)
            if status != 0:
                tally.fail(f"exit status {status}")
            else:
                tally.ok()
        except Exception as exc:  # counted, reported, and the loop goes on
            tally.fail(describe(exc))
            try:
                client.remove(cid, kill=True)
            except Exception as cleanup_exc:
                tally.errors[f"cleanup: {describe(cleanup_exc)}"] += 1


def exec_worker(client: Client, image: dict, deadline: float, tally: Tally):
    """One long-running container; loops exec `true` in it."""
    cid = f"stress-exec-{uuid.uuid4().hex[:6]}"
    try:
        mounts = client.create_container(cid, image, ["/bin/sleep", "100000"])
        client.call(client.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts))
        client.call(client.tasks.Start, tasks_pb2.StartRequest(container_id=cid))
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                status = client.exec_true(cid, f"exec-{n}", image)
                tally.ok() if status == 0 else tally.fail(f"exit status {status}")
            except Exception as exc:
                tally.fail(describe(exc))
    except Exception as exc:
        tally.fail(describe(exc))
    finally:
        try:
            client.remove(cid, kill=True)
        except Exception as exc:
            tally.errors[f"cleanup: {describe(exc)}"] += 1


def run_churn(args) -> dict:
    client = make_client(args)
    image = client.resolve(args.image)
    tally, exec_tally = Tally(), Tally()
    started = time.monotonic()
    deadline = started + args.duration
    threads = [threading.Thread(target=churn_worker, args=(client, image, i, deadline, tally))
               for i in range(args.concurrent)]
    if args.exec:
        threads.append(threading.Thread(target=exec_worker, args=(client, image, deadline, exec_tally)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    result = {"address": args.address, "image": args.image, "workers": args.concurrent,
              "seconds": seconds, "containers": tally.count,
              "containers_per_s": tally.count / seconds, "failures": tally.failures,
              "errors": dict(tally.errors)}
    if args.exec:
        result["exec"] = {"execs": exec_tally.count, "execs_per_s": exec_tally.count / seconds,
                          "failures": exec_tally.failures, "errors": dict(exec_tally.errors)}
    return result


# --- density ---------------------------------------------------------------------

def shim_pids(address: str) -> list[int]:
    """containerd-shim processes serving this daemon (their -address argument names it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and b"containerd-shim" in argv[0] and address.encode() in argv:
                pids.append(int(entry))
    return pids


def _mem_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def run_density(args) -> dict:
    client = make_client(args)
    image = client.resolve(args.image)
    before = set(shim_pids(args.address))
    ids, errors, running = [], collections.Counter(), 0
    started = time.monotonic()
    try:
        for i in range(args.count):
            cid = f"density-{i}-{uuid.uuid4().hex[:6]}"
            try:
                mounts = client.create_container(cid, image, ["/bin/sleep", "100000"])
                ids.append(cid)
                client.call(client.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts))
                client.call(client.tasks.Start, tasks_pb2.StartRequest(container_id=cid))
                running += 1
            except Exception as exc:
                errors[describe(exc)] += 1
        start_seconds = time.monotonic() - started
        time.sleep(1.0)  # let the shims settle
        shims = [pid for pid in shim_pids(args.address) if pid not in before]
        pss = rss = 0
        for pid in shims:
            try:
                p, r = _mem_kib(pid)
            except OSError:
                continue
            pss, rss = pss + p, rss + r
        per = max(running, 1)
        return {"address": args.address, "count": args.count, "running": running, "shims": len(shims),
                "start_seconds": start_seconds,
                "shim_pss_mib_total": pss / 1024, "shim_rss_mib_total": rss / 1024,
                "shim_pss_mib_per_container": pss / 1024 / per,
                "shim_rss_mib_per_container": rss / 1024 / per,
                "failures": sum(errors.values()), "errors": dict(errors)}
    finally:
        for cid in ids:
            try:
                client.remove(cid, kill=True)
            except Exception as exc:
                errors[f"cleanup: {describe(exc)}"] += 1


# --- command line ----------------------------------------------------------------

def make_client(args) -> Client:
    return Client(args.address, args.namespace, args.snapshotter, args.runtime, args.runc_root)


def duration(text: str) -> float:
    """Seconds from '90', '90s', '10m' or '1h' (Go-style durations, as containerd-stress takes)."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctrappliance-stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-a", "--address", default="/run/ctrappliance/ctrappliance.sock")
    parser.add_argument("-c", "--concurrent", type=int, default=1, help="workers (default 1)")
    parser.add_argument("-d", "--duration", type=duration, default=60.0, help="e.g. 60s, 10m")
    parser.add_argument("-i", "--image", default="localhost/busybox:latest")
    parser.add_argument("-n", "--namespace", default="stress")
    parser.add_argument("--exec", action="store_true", help="add a worker that execs in a container")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--runtime", default="io.containerd.runc.v2")
    parser.add_argument("--snapshotter", default="overlayfs")
    parser.add_argument("--runc-root", default=None, help="runc state dir (runc option Root)")
    sub = parser.add_subparsers(dest="command")
    density = sub.add_parser("density", help="shim memory per running container")
    density.add_argument("--count", type=int, default=10)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        result = run_density(args) if args.command == "density" else run_churn(args)
    except grpc.RpcError as exc:
        print(f"ctrappliance-stress: {describe(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "density":
        print(f"{result['running']} containers, {result['shims']} shims: "
              f"PSS {result['shim_pss_mib_per_container']:.2f} MiB, "
              f"RSS {result['shim_rss_mib_per_container']:.2f} MiB per container")
    else:
        print(f"Run Summary: seconds={result['seconds']:.1f} containers={result['containers']} "
              f"containers/s={result['containers_per_s']:.2f} failures={result['failures']}")
        for error, count in result["errors"].items():
            print(f"  {count}× {error}")
    return 0 if result["failures"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
