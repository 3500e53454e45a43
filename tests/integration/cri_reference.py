"""A CRI daemon set up to run pods of the security test image: containerd 1.6.20 with CRI on, or
ctrappliance, each with the image as the sandbox image, runc state under a private root, pods in
a private cgroup parent. Used to obtain a daemon's OCI spec for a request (ContainerStatus /
PodSandboxStatus verbose `runtimeSpec`), its refusals, and what a container sees."""
import gzip
import io
import json
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import grpc

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from cri_security_image import make_security_image
from cri_helpers import make_daemon
from daemon import wait_for
from runtime_helpers import remove_cgroup_dirs

IMAGE = "localhost/cri-sec:v1"


def extract_rootfs(image_tar: Path, into: Path) -> dict:
    """Unpack the image's layers (no whiteouts in this image) and return its config."""
    with tarfile.open(image_tar) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"][7:]])
    into.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        data = gzip.decompress(blobs["blobs/sha256/" + layer["digest"][7:]])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into, filter="tar")
    return config["config"]


class CRIReference:
    def __init__(self, kind: str = "containerd", extra: str = "", cni_conf_dir: str = ""):
        self.kind = kind
        self.extra = extra           # more keys for the CRI table
        self.cni_conf_dir = cni_conf_dir
        self.work = Path(tempfile.mkdtemp(prefix="cri-sec-", dir="/tmp"))
        self.cgroup_parent = f"/cri-sec-{uuid.uuid4().hex[:8]}"
        self.daemon = None
        self.pods: list[str] = []

    def start(self):
        image = make_security_image(self.work)
        self.image_config = extract_rootfs(image, self.work / "rootfs")
        self.rootfs = str(self.work / "rootfs")
        self.daemon = d = make_daemon(self.kind, IMAGE, self.extra, self.cni_conf_dir)
        d.start()
        d.ctr("images", "import", str(image), namespace="k8s.io")
        self.channel = grpc.insecure_channel(f"unix://{d.address}")
        self.rt = rpc.RuntimeServiceStub(self.channel)
        images = rpc.ImageServiceStub(self.channel)
        wait_for(lambda: images.ImageStatus(pb.ImageStatusRequest(
            image=pb.ImageSpec(image=IMAGE))).HasField("image"), what="CRI sees the image")
        return self

    def pod_config(self, name, **security) -> pb.PodSandboxConfig:
        sc = pb.LinuxSandboxSecurityContext(**security)
        if not sc.HasField("namespace_options"):
            sc.namespace_options.network = pb.NODE
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="cri-sec"),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent, security_context=sc))

    def run_pod(self, config: pb.PodSandboxConfig) -> str:
        sid = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
        self.pods.append(sid)
        return sid

    def pod_info(self, sid: str) -> dict:
        status = self.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid,
                                                                     verbose=True))
        return json.loads(status.info["info"])

    def create(self, sid, pod, config: pb.ContainerConfig) -> str:
        return self.rt.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sid, config=config, sandbox_config=pod)).container_id

    def container_spec(self, cid: str) -> dict:
        status = self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid,
                                                                   verbose=True))
        return json.loads(status.info["info"])["runtimeSpec"]

    def exec(self, cid: str, *argv: str, timeout: int = 20) -> tuple[int, str]:
        """(exit code, stdout+stderr) of a command in the container: ExecSync, or ctr's task
        exec where the daemon does not serve ExecSync."""
        try:
            resp = self.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(argv),
                                                       timeout=timeout), timeout=timeout + 10)
            return resp.exit_code, (resp.stdout + resp.stderr).decode()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        result = self.daemon.ctr("task", "exec", "--exec-id", uuid.uuid4().hex[:12], cid,
                                 *argv, namespace="k8s.io", check=False, timeout=timeout + 10)
        return result.returncode, result.stdout + result.stderr

    def start_container(self, sid, pod, config) -> str:
        cid = self.create(sid, pod, config)
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        return cid

    def restart(self):
        """Stop the daemon (its containers keep running) and start it again."""
        self.channel.close()
        self.daemon.stop()
        self.daemon.start()
        self.channel = grpc.insecure_channel(f"unix://{self.daemon.address}")
        self.rt = rpc.RuntimeServiceStub(self.channel)

        def ready():   # containerd's CRI answers "server is not initialized yet" for a while
            try:
                self.rt.ListPodSandbox(pb.ListPodSandboxRequest())
                return True
            except grpc.RpcError:
                return False
        wait_for(ready, what="the CRI after a restart")

    def serves_pods(self) -> bool:
        try:
            self.rt.ListPodSandbox(pb.ListPodSandboxRequest())
            return True
        except grpc.RpcError as exc:
            return exc.code() != grpc.StatusCode.UNIMPLEMENTED

    def cleanup(self):
        try:
            for sid in self.pods:
                try:
                    self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid))
                    self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid))
                except grpc.RpcError:
                    pass
            self.channel.close()
        finally:
            if self.daemon is not None:
                self.daemon.cleanup()
            remove_cgroup_dirs(self.cgroup_parent.lstrip("/"))
            shutil.rmtree(self.work, ignore_errors=True)


def container_config(name: str, **linux) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                              image=pb.ImageSpec(image=IMAGE),
                              linux=pb.LinuxContainerConfig(**linux))
