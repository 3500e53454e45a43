"""Where a registry's content is fetched from: containerd's `certs.d` host directories.

`<config_path>/<host>/hosts.toml` lists mirrors as `[host."<url>"]` tables, tried in file order,
then the `server` (the registry itself) last. Each has `capabilities` (pull, resolve, push),
`ca`, `client` certificates, `skip_verify`, `header` and `override_path`. A directory without
hosts.toml still supplies `*.crt` CAs and `*.cert`/`*.key` client pairs. Without any directory:
`docker.io` is served by registry-1.docker.io, a loopback registry over plain HTTP, anything
else over HTTPS. (Pure: reads files, opens no connection.)
"""
from __future__ import annotations

import ipaddress
import logging
import os
import posixpath
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ...errdefs import InvalidArgument

log = logging.getLogger("appliance.remotes")
PULL, RESOLVE, PUSH = "pull", "resolve", "push"
ALL_CAPABILITIES = frozenset({PULL, RESOLVE, PUSH})


@dataclass
class RegistryHost:
    scheme: str                          # "https" or "http"
    host: str                            # host[:port] to connect to
    path: str = "/v2"                    # API root: requests go to <path>/<repo>/manifests/…
    capabilities: frozenset = ALL_CAPABILITIES
    ca_certs: list[str] = field(default_factory=list)
    client_pairs: list[tuple[str, str]] = field(default_factory=list)   # (cert, key or "")
    skip_verify: bool | None = None
    header: dict[str, list[str]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


def is_localhost(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1:name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_dir(config_path: str, host: str) -> str | None:
    """The certs.d directory for `host`: `host_port_` form first, then `host`, then
    `_default`; None when there is none."""
    candidates = []
    colon = host.rfind(":")
    if colon > 0:
        candidates.append(host[:colon] + "_" + host[colon + 1:] + "_")
    candidates += [host, "_default"]
    for name in candidates:
        path = os.path.join(config_path, name)
        if os.path.exists(path):
            return path
    return None


def registry_hosts(host: str, config_path: str = "") -> list[RegistryHost]:
    """The hosts to try for registry `host`, in order (mirrors first, the server last)."""
    hosts: list[RegistryHost] = []
    directory = host_dir(config_path, host) if config_path else None
    if directory:
        hosts = _load_dir(directory)
    if not hosts:
        hosts = [RegistryHost(scheme="", host="")]
    last = hosts[-1]
    if not last.host:
        if host == "docker.io":
            last.scheme, last.host = "https", "registry-1.docker.io"
        elif is_localhost(host):
            last.scheme, last.host, last.skip_verify = "http", host, True
        else:
            last.scheme, last.host = "https", host
        last.path, last.capabilities = "/v2", ALL_CAPABILITIES
    return hosts


def _load_dir(directory: str) -> list[RegistryHost]:
    path = os.path.join(directory, "hosts.toml")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    if not data:
        return [_cert_files(directory)]
    try:
        table = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:   # as containerd: log, go on
        log.error("failed to decode %s: %s", path, exc)
        return [_cert_files(directory)]
    hosts = [_host(url, directory, cfg, path)
             for url, cfg in (table.get("host") or {}).items()]   # file order, as written
    hosts.append(_host(table.get("server", ""), directory, table, path))
    return hosts


def _host(server: str, base: str, cfg: dict, where: str) -> RegistryHost:
    result = RegistryHost(scheme="", host="")
    if server:
        if not server.startswith("http"):
            server = "https://" + server
        url = urlsplit(server)
        result.scheme, result.host = url.scheme, url.netloc
        override = bool(cfg.get("override_path", False))
        if url.path:
            clean = posixpath.normpath(url.path)
            result.path = clean if clean.endswith("/v2") or override else clean + "/v2"
        else:
            result.path = "" if override else "/v2"
    result.skip_verify = cfg.get("skip_verify")
    caps = cfg.get("capabilities")
    if caps:
        unknown = [c for c in caps if str(c).lower() not in ALL_CAPABILITIES]
        if unknown:
            raise InvalidArgument(f"{where}: unknown capability {unknown[0]}")
        result.capabilities = frozenset(str(c).lower() for c in caps)
    ca = cfg.get("ca")
    if ca is not None:
        result.ca_certs = [_abs(p, base) for p in _strings(ca, "ca", where)]
    client = cfg.get("client")
    if client is not None:
        result.client_pairs = _client_pairs(client, base, where)
    for key, value in (cfg.get("header") or {}).items():
        result.header[key] = _strings(value, f"header {key!r}", where)
    return result


def _client_pairs(client, base: str, where: str) -> list[tuple[str, str]]:
    if isinstance(client, str):
        return [(_abs(client, base), "")]
    if not isinstance(client, list):
        raise InvalidArgument(f"{where}: invalid type for \"client\"")
    pairs = []
    for item in client:
        if isinstance(item, str):
            pairs.append((_abs(item, base), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item):
            pairs.append((_abs(item[0], base), _abs(item[1], base)))
        else:
            raise InvalidArgument(f"{where}: invalid pair {item!r} for \"client\"")
    return pairs


def _strings(value, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"{where}: invalid type for {what}")


def _abs(path: str, base: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base, path)


def _cert_files(directory: str) -> RegistryHost:
    host = RegistryHost(scheme="", host="")
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            continue
        if name.endswith(".crt"):
            host.ca_certs.append(path)
        if name.endswith(".cert"):
            key = path[:-len(".cert")] + ".key"
            host.client_pairs.append((path, key if os.path.exists(key) else ""))
    return host
