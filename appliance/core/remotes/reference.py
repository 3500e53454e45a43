"""Image references as Docker and containerd's CRI normalise them (pure).

`busybox` → `docker.io/library/busybox:latest`; `host:5000/a/b@sha256:…` keeps its
registry and digest. The first path component names a registry when it contains a dot or a
colon, or is `localhost`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...errdefs import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")


@dataclass(frozen=True)
class Reference:
    domain: str          # registry host as named: docker.io, localhost:5000, 127.0.0.1:5000
    path: str            # repository path inside it: library/busybox
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository with its domain: docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What the registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_digest(self, digest: str) -> "Reference":
        """`name@digest`, the form containerd's CRI records as a repo digest."""
        return Reference(self.domain, self.path, "", digest)


def parse(text: str) -> Reference:
    """Parse and normalise `text`; the default tag is `latest` unless a digest is given."""
    if not text:
        raise InvalidArgument("invalid reference format: repository name must have at least "
                              "one component")
    rest, digest = text, ""
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise InvalidArgument(f"invalid reference format: invalid digest {digest!r}")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid reference format: invalid tag {tag!r}")
    domain, _, path = rest.partition("/")
    if not path or not ("." in domain or ":" in domain or domain == "localhost"
                        or domain.startswith("[")):
        domain, path = DEFAULT_DOMAIN, rest
    elif not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid reference format: invalid registry {domain!r}")
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if any(not _COMPONENT.match(part) for part in path.split("/")):
        if path.lower() != path:
            raise InvalidArgument("invalid reference format: repository name must be lowercase")
        raise InvalidArgument(f"invalid reference format: {text!r}")
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise InvalidArgument(f"invalid reference format: repository name must not be more "
                              f"than {NAME_MAX} characters")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
