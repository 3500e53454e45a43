"""Generate Python stubs from the containerd .proto files Debian ships, and the Kubernetes
CRI stubs (runtime.v1, runtime.v1alpha2) from the descriptors in PyPI's
container-runtime-interface-api wheel (never installed: it pins another protobuf; its
serialized file descriptors are read out of the wheel and compiled again here).

The gogoproto and fieldpath options only steer Go code generation, so they are
stripped; imports are relocated from github.com/containerd/containerd/ to
appliance/_proto/containerd/ so no top-level ``github`` package appears.
Runs at build time (scripts/dev setup, setup.py build); output is never edited.
"""
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

GOCODE = Path(os.environ.get("CONTAINERD_PROTO_ROOT",
                             "/usr/share/gocode/src/github.com/containerd/containerd"))
REPO = Path(__file__).resolve().parent.parent
OUT_PACKAGE = "appliance/_proto"
SOURCES = [
    "api/events/container.proto", "api/events/content.proto", "api/events/image.proto",
    "api/events/namespace.proto", "api/events/snapshot.proto", "api/events/task.proto",
    "api/services/containers/v1/containers.proto", "api/services/content/v1/content.proto",
    "api/services/diff/v1/diff.proto", "api/services/events/v1/events.proto",
    "api/services/images/v1/images.proto", "api/services/introspection/v1/introspection.proto",
    "api/services/leases/v1/leases.proto", "api/services/namespaces/v1/namespace.proto",
    "api/services/snapshots/v1/snapshots.proto", "api/services/tasks/v1/tasks.proto",
    "api/services/ttrpc/events/v1/events.proto", "api/services/version/v1/version.proto",
    "api/types/descriptor.proto", "api/types/metrics.proto", "api/types/mount.proto",
    "api/types/platform.proto", "api/types/task/task.proto",
    "runtime/v2/task/shim.proto", "runtime/v2/runc/options/oci.proto",
]
# containerd 1.7 added these fields; they are additive, so one set of stubs serves both.
ADDITIVE_1_7 = {
    "api/services/containers/v1/containers.proto": [
        ("message Container {", "\tstring sandbox = 11;\n")],
    "api/services/introspection/v1/introspection.proto": [
        ("message ServerResponse {",
         "\tuint64 pid = 2;\n\tuint64 pidns = 3;\n\trepeated DeprecationWarning deprecations = 4;\n")],
}
EXTRA_MESSAGES = {
    "api/services/introspection/v1/introspection.proto":
        "\nmessage DeprecationWarning {\n\tstring id = 1;\n\tstring message = 2;\n"
        "\tgoogle.protobuf.Timestamp last_occurrence = 3;\n}\n",
}

_WEAK_IMPORT = re.compile(r'^import weak "[^"]*";\n', re.M)
_FILE_OPTION = re.compile(r'^option \((gogoproto|containerd\.plugin)\.[^;]*;\n', re.M)
_FIELD_OPTIONS = re.compile(r'\s*\[\s*\((gogoproto|containerd\.plugin)\.[^\]]*\]')
_GO_PACKAGE = re.compile(r'^option go_package = "[^"]*";\n', re.M)


def transform(path, text):
    text = _WEAK_IMPORT.sub("", text)
    text = _FILE_OPTION.sub("", text)
    text = _FIELD_OPTIONS.sub("", text)
    text = _GO_PACKAGE.sub("", text)
    text = re.sub(r'^\s*option \((gogoproto|containerd\.plugin)\.[^;]*;\n', "", text, flags=re.M)
    text = text.replace('"github.com/containerd/containerd/', '"appliance/_proto/containerd/')
    for anchor, fields in ADDITIVE_1_7.get(path, []):
        start = text.index(anchor)
        end = _message_end(text, start)
        text = text[:end] + fields + text[end:]
    text += EXTRA_MESSAGES.get(path, "")
    if "google.protobuf.Timestamp" in text and "google/protobuf/timestamp.proto" not in text:
        text = text.replace("\nimport ", '\nimport "google/protobuf/timestamp.proto";\nimport ', 1)
    return text


def _message_end(text, start):
    """Index of the closing brace of the message that starts at ``start``."""
    depth = 0
    for i in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced message")


CRI_WHEEL = "container-runtime-interface-api==2.0.1"
CRI_FILES = {"cri_api/v1/api_pb2.py": "cri/v1/api.proto",
             "cri_api/v1alpha2/api_pb2.py": "cri/v1alpha2/api.proto"}


def cri_descriptor_set(tmp: Path) -> Path:
    """A FileDescriptorSet of the CRI API files, named under appliance/_proto/cri/."""
    import ast
    import subprocess
    import zipfile
    from google.protobuf import descriptor_pb2
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--no-deps", "--only-binary=:all:", "-d", str(tmp), CRI_WHEEL],
                   check=True, stderr=subprocess.DEVNULL)
    [wheel] = tmp.glob("container_runtime_interface_api-*.whl")
    files = descriptor_pb2.FileDescriptorSet()
    with zipfile.ZipFile(wheel) as z:
        for member, name in CRI_FILES.items():
            calls = [n for n in ast.walk(ast.parse(z.read(member)))
                     if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "AddSerializedFile"]
            fd = descriptor_pb2.FileDescriptorProto.FromString(calls[0].args[0].value)
            fd.name = f"{OUT_PACKAGE}/{name}"
            del fd.dependency[:]        # gogo.proto: its options only steer Go code
            fd.DiscardUnknownFields()
            files.file.append(fd)
    out = tmp / "cri.pb"
    out.write_bytes(files.SerializeToString())
    return out


def main():
    from grpc_tools import protoc
    import grpc_tools
    import google.rpc.status_pb2
    google_root = Path(google.rpc.status_pb2.__file__).parent.parent.parent
    builtin = Path(grpc_tools.__file__).parent / "_proto"
    out = REPO / OUT_PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        staged = []
        for rel in SOURCES:
            dest = Path(tmp) / OUT_PACKAGE / "containerd" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(transform(rel, (GOCODE / rel).read_text()))
            staged.append(str(dest.relative_to(tmp)))
        gen = Path(tmp) / "gen"
        gen.mkdir()
        args = ["protoc", f"-I{tmp}", f"-I{builtin}", f"-I{google_root}",
                f"--python_out={gen}", f"--pyi_out={gen}", f"--grpc_python_out={gen}", *staged]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        cri = cri_descriptor_set(Path(tmp))
        if protoc.main(["protoc", f"--descriptor_set_in={cri}", f"--python_out={gen}",
                        f"--pyi_out={gen}", f"--grpc_python_out={gen}",
                        *(f"{OUT_PACKAGE}/{name}" for name in CRI_FILES.values())]) != 0:
            sys.exit("protoc failed for the CRI API")
        for part in ("containerd", "cri"):
            shutil.rmtree(out / part, ignore_errors=True)
            shutil.copytree(gen / OUT_PACKAGE / part, out / part)
    out.mkdir(parents=True, exist_ok=True)
    for d in [out, *[p for p in out.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        (d / "__init__.py").touch()
    print(f"generated {len(list(out.rglob('*_pb2.py')))} modules under {out}")


if __name__ == "__main__":
    main()
