"""A CRI daemon set up to run pods of the security test image: containerd 1.6.20 with CRI on, or
ctrappliance, each with the image as the sandbox image, runc state under a private root, pods in
a private cgroup parent. Used to obtain a daemon's OCI spec for a request (ContainerStatus /
PodSandboxStatus verbose `runtimeSpec`), its refusals, and what a container sees."""
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import grpc

from appliance._proto.cri.v1 import api_pb2 as pb, api_pb2_grpc as rpc
from cri_security_image import make_security_image
from daemon import Daemon, wait_for
from reference import Containerd

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
    def __init__(self, kind: str = "containerd"):
        self.kind = kind
        self.work = Path(tempfile.mkdtemp(prefix="cri-sec-", dir="/tmp"))
        self.cgroup_parent = f"/cri-sec-{uuid.uuid4().hex[:8]}"
        self.daemon = Containerd(cri=True) if kind == "containerd" else None
        self.pods: list[str] = []

    def _cri_config(self) -> str:
        return (f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                f'  runtime_type = "io.containerd.runc.v2"\n'
                f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
                f'  Root = "{self.work}/runc"\n')

    def _start_containerd(self):
        d = self.daemon
        write = d.write_config

        def write_config():
            write()
            text = d.config_path.read_text().replace(
                '[plugins."io.containerd.grpc.v1.cri"]\n',
                f'[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "{IMAGE}"\n', 1)
            d.config_path.write_text(text + self._cri_config())
        d.write_config = write_config
        d.start()
        return d

    def _start_ours(self):
        config = self.work / "ctrappliance.toml"
        config.write_text(
            f'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
            f'  sandbox_image = "{IMAGE}"\n  stream_server_port = "0"\n'
            f'  netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n'
            f'[plugins."io.containerd.grpc.v1.cri".cni]\n'
            f'  bin_dir = "{self.work}/cni/bin"\n  conf_dir = "{self.work}/cni/net.d"\n'
            + self._cri_config())
        self.daemon = Daemon(workdir=str(self.work / "daemon"), config=str(config))
        return self.daemon.start()

    def start(self):
        image = make_security_image(self.work)
        self.image_config = extract_rootfs(image, self.work / "rootfs")
        self.rootfs = str(self.work / "rootfs")
        d = self._start_containerd() if self.kind == "containerd" else self._start_ours()
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
            for controller in os.listdir("/sys/fs/cgroup"):
                path = f"/sys/fs/cgroup/{controller}{self.cgroup_parent}"
                if os.path.isdir(path):
                    for sub in os.listdir(path):
                        if os.path.isdir(f"{path}/{sub}"):
                            try:
                                os.rmdir(f"{path}/{sub}")
                            except OSError:
                                pass
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
            shutil.rmtree(self.work, ignore_errors=True)


def container_config(name: str, **linux) -> pb.ContainerConfig:
    return pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name),
                              image=pb.ImageSpec(image=IMAGE),
                              linux=pb.LinuxContainerConfig(**linux))
