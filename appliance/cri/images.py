"""The CRI image half: what kubelet's image manager asks of a node, over the daemon's own
image, content and snapshot services in namespace `k8s.io`.

An image, to the CRI, is one config digest (its id) with the names that point at it: tags
(`docker.io/library/busybox:1.36`), repo digests (`…/busybox@sha256:<manifest>`) and the id
itself, each an image record, as containerd's CRI keeps them. Records created outside the CRI
(`ctr -n k8s.io images import`) count too.
"""
from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..core.metadata.images import Descriptor, Image
from ..core.remotes import hosts as hostlib, pull as pulllib
from ..core.remotes.hosts import RegistryHost
from ..core.remotes.reference import parse as parse_reference
from ..core.remotes.registry import DOCKER_LIST, OCI_INDEX, Timeouts
from ..config import parse_duration
from ..errdefs import AlreadyExists, ApplianceError, InvalidArgument, NotFound
from .config import CRIConfig

log = logging.getLogger("appliance.cri")

NAMESPACE = "k8s.io"
MANAGED_LABEL = "io.cri-containerd.image"
PINNED_LABEL = "io.cri-containerd.pinned"      # containerd 1.7: kubelet's GC keeps it


@dataclass
class CRIImage:
    id: str                                    # config digest
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0
    config: dict = field(default_factory=dict)
    chain_id: str = ""
    pinned: bool = False


class ImageService:
    def __init__(self, cfg: CRIConfig, puller: pulllib.Puller, images, content, snapshots,
                 snapshot_root: str):
        self.cfg = cfg
        self.puller = puller
        self.images = images
        self.content = content
        self.snapshots = snapshots
        self.snapshot_root = snapshot_root
        self._view_cache: tuple | None = None    # see _view()

    # --- PullImage -------------------------------------------------------------------

    async def pull(self, text: str, auth=None) -> str:
        """Pull `text`; returns the image id (config digest), as containerd's CRI does."""
        ref = parse_reference(text)
        creds = _credentials(auth, self.cfg.registry, ref.domain)
        progress = parse_duration(self.cfg.image_pull_progress_timeout)
        opts = pulllib.PullOptions(
            snapshotter=self.cfg.containerd.snapshotter,
            hosts=lambda domain: registry_hosts(self.cfg.registry, domain),
            credentials=creds,
            max_concurrent_downloads=self.cfg.max_concurrent_downloads,
            timeouts=Timeouts(read=progress if progress > 0 else 3600.0),
            labels={MANAGED_LABEL: "managed"})
        try:
            pulled = await self.puller.pull(NAMESPACE, str(ref), opts)
        except ApplianceError as exc:   # containerd's words, the cause's status code
            raise type(exc)(f"failed to pull and unpack image {_q(str(ref))}: "
                            f"{exc.message}") from None
        labels = {MANAGED_LABEL: "managed"}
        if _same_image(str(ref), self.cfg.sandbox_image):
            labels[PINNED_LABEL] = "pinned"
        target = pulled.image.target
        for name in (str(ref.with_digest(target.digest)), pulled.config_digest):
            self._put(Image(name, Descriptor(target.media_type, target.digest, target.size),
                            labels))
        if labels != pulled.image.labels:
            self._put(Image(pulled.image.name, pulled.image.target, labels))
        self.invalidate()
        return pulled.config_digest

    def _put(self, image: Image) -> None:
        try:
            self.images.create(NAMESPACE, image)
        except AlreadyExists:
            self.images.update(NAMESPACE, image, [])

    # --- lookups ---------------------------------------------------------------------

    def list(self) -> list[CRIImage]:
        return list(self._index()[0].values())

    def _index(self) -> tuple[dict[str, CRIImage], dict[str, str]]:
        """(id -> image, record name -> id) of every image in the store the CRI can use."""
        by_id: dict[str, CRIImage] = {}
        by_name: dict[str, str] = {}
        for record in self.images.list(NAMESPACE):
            try:
                image = self._describe(record)
            except (NotFound, InvalidArgument, ValueError) as exc:
                log.debug("image %s is not usable by the CRI: %s", record.name, exc)
                continue
            found = by_id.setdefault(image.id, image)
            _add_name(found, record.name)
            found.pinned = found.pinned or record.labels.get(PINNED_LABEL) == "pinned"
            by_name[record.name] = image.id
        return by_id, by_name

    def _view(self) -> tuple[dict[str, CRIImage], dict[str, str]]:
        """_index(), rebuilt only after an image changed (invalidate(): our own pulls and
        removals, and the image events the CRI's monitor sees), as containerd's CRI keeps
        its image store: ContainerStatus (kubelet's relist), ImageStatus, RunPodSandbox and
        CreateContainer read it instead of describing every image of the store. Its
        images are shared: callers do not modify them."""
        if self._view_cache is None:
            self._view_cache = self._index()
        return self._view_cache

    def cached(self, image_id: str) -> CRIImage | None:
        return self._view()[0].get(image_id)

    def invalidate(self) -> None:
        self._view_cache = None

    def status(self, text: str) -> CRIImage | None:
        """The image a reference, repo digest or id names; None when there is none. From
        the view; a name it does not know yet (its event not seen) is looked up in the
        store."""
        by_id, by_name = self._view()
        for name in _candidates(text):
            if name in by_name:
                return by_id[by_name[name]]
        return self._status_in_store(text)

    def _status_in_store(self, text: str) -> CRIImage | None:
        wanted = self._resolve_id(text)
        if wanted is None:
            return None
        return next((i for i in self.list() if i.id == wanted), None)

    def _resolve_id(self, text: str) -> str | None:
        for name in _candidates(text):
            try:
                return self._describe(self.images.get(NAMESPACE, name)).id
            except NotFound:
                continue
        if len(text) >= 12 and all(c in "0123456789abcdef" for c in text.removeprefix("sha256:")):
            ids = {i.id for i in self.list()
                   if i.id.removeprefix("sha256:").startswith(text.removeprefix("sha256:"))}
            if len(ids) == 1:
                return ids.pop()
        return None

    def _describe(self, record: Image) -> CRIImage:
        target = record.target
        size = target.size
        manifest_digest = target.digest
        if target.media_type in (OCI_INDEX, DOCKER_LIST):
            index = json.loads(self._read(target.digest))
            chosen = pulllib._pick_manifest(index, record.name)
            manifest_digest, size = chosen.digest, size + chosen.size
        manifest = json.loads(self._read(manifest_digest))
        config_digest = manifest["config"]["digest"]
        config = json.loads(self._read(config_digest))
        size += manifest["config"]["size"] + sum(int(d["size"]) for d in manifest["layers"])
        chains = pulllib.chain_ids(config.get("rootfs", {}).get("diff_ids", []))
        return CRIImage(config_digest, size=size, config=config,
                        chain_id=chains[-1] if chains else "")

    def _read(self, digest: str) -> bytes:
        with self.content.reader(NAMESPACE, digest) as f:
            return f.read()

    # --- RemoveImage, ImageFsInfo ------------------------------------------------------

    async def remove(self, text: str) -> None:
        """Every name of the image goes; a missing image is no error (as containerd)."""
        image = self._status_in_store(text)
        if image is None:
            return
        names = image.repo_tags + image.repo_digests + [image.id]
        for name in names:
            try:
                await self.images.delete(NAMESPACE, name)
            except NotFound:
                pass
        self.invalidate()


# The fields of the OCI image config in the order of Go's ocispec structs: containerd's
# verbose ImageStatus marshals the config through them (other keys are dropped).
_IMAGE_FIELDS = ("created", "author", "architecture", "variant", "os", "os.version",
                 "os.features", "config", "rootfs", "history")
_NESTED_FIELDS = {
    "config": ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
               "Labels", "StopSignal", "ArgsEscaped"),
    "rootfs": ("type", "diff_ids"),
    "history": ("created", "created_by", "author", "comment", "empty_layer"),
}


def verbose_info(image: CRIImage) -> str:
    """ImageStatus' `info` value: containerd's JSON, byte for byte (compact, Go's order;
    empty fields omitted except those Go's structs always write)."""
    always = {"architecture": "", "os": "", "config": {}, "rootfs": {}, "type": "",
              "diff_ids": None}

    def pick(obj: dict, keys) -> dict:
        return {k: obj.get(k, always.get(k)) for k in keys
                if k in always or obj.get(k) not in (None, "", [], {}, False)}
    spec = pick(image.config, _IMAGE_FIELDS)
    for key, fields in _NESTED_FIELDS.items():
        if isinstance(spec.get(key), list):
            spec[key] = [pick(item, fields) for item in spec[key]]
        elif isinstance(spec.get(key), dict):
            spec[key] = pick(spec[key], fields)
    for item in [spec, *(spec.get("history") or [])]:
        if isinstance(item.get("created"), str):
            item["created"] = _go_time(item["created"])
    return _go_json({"chainID": image.chain_id, "imageSpec": spec})


def _go_time(text: str) -> str:
    """An RFC 3339 time as Go writes it back: no trailing zeros in the fraction, Z for UTC."""
    m = re.fullmatch(r"([^.]+?)(?:\.(\d+))?(Z|[+-]00:00|[+-]\d\d:\d\d)", text)
    if m is None:
        return text
    fraction = (m.group(2) or "").rstrip("0")
    zone = "Z" if m.group(3) in ("+00:00", "-00:00") else m.group(3)
    return m.group(1) + (f".{fraction}" if fraction else "") + zone


def _go_json(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _candidates(text: str) -> list[str]:
    """The names `text` may be: itself, and the reference it normalizes to."""
    try:
        normalized = str(parse_reference(text))
    except InvalidArgument:
        return [text]
    return [text] if normalized == text else [text, normalized]


def _add_name(image: CRIImage, name: str) -> None:
    if name == image.id:
        return
    if "@" in name:
        image.repo_digests.append(name)
    else:
        image.repo_tags.append(name)


def _same_image(a: str, b: str) -> bool:
    try:
        return str(parse_reference(a)) == str(parse_reference(b))
    except InvalidArgument:
        return False


def _q(text: str) -> str:
    return json.dumps(text)


def _credentials(auth, registry, domain: str):
    """The pull's credentials: the request's AuthConfig first, then `registry.configs`."""
    user = secret = ""
    if auth is not None:
        user, secret = auth.username, auth.password
        if auth.auth and not user:
            user, _, secret = base64.b64decode(auth.auth).decode().partition(":")
        if auth.identity_token and not user:
            user, secret = "", auth.identity_token
    if not user and not secret:
        for host, cfg in registry.configs.items():
            if host == domain and (cfg.auth.username or cfg.auth.auth):
                user, secret = cfg.auth.username, cfg.auth.password
                if cfg.auth.auth and not user:
                    user, _, secret = base64.b64decode(cfg.auth.auth).decode().partition(":")
    if not user and not secret:
        return None
    return lambda host: (user, secret)


def registry_hosts(registry, domain: str) -> list[RegistryHost]:
    """Hosts for `domain`: from `registry.config_path` (certs.d) when set; else containerd
    1.6's deprecated `registry.mirrors` endpoints, then the registry itself, each with its
    `registry.configs.<host>.tls`; `registry.headers` go with every request."""
    if registry.config_path:
        found = hostlib.registry_hosts(domain, registry.config_path)
    else:
        found = []
        mirror = registry.mirrors.get(domain) or registry.mirrors.get("*")
        for endpoint in mirror.endpoint if mirror else []:
            url = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
            path = url.path.rstrip("/")
            found.append(RegistryHost(url.scheme, url.netloc,
                                      path if path.endswith("/v2") else path + "/v2",
                                      frozenset({hostlib.PULL, hostlib.RESOLVE})))
        default = hostlib.registry_hosts(domain)[-1]
        if all(h.host != default.host for h in found):
            found.append(default)
        for host in found:
            tls = registry.configs.get(host.host, None)
            if tls is not None:
                tls = tls.tls
                host.skip_verify = tls.insecure_skip_verify or host.skip_verify
                if tls.ca_file:
                    host.ca_certs.append(tls.ca_file)
                if tls.cert_file:
                    host.client_pairs.append((tls.cert_file, tls.key_file))
    for host in found:
        for key, values in registry.headers.items():
            host.header.setdefault(key, list(values))
    return found
