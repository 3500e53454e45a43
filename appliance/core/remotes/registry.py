"""A registry v2 client for one repository: resolve a reference to a manifest, fetch blobs.

Hosts are tried in the order `hosts.registry_hosts` gives (mirrors, then the registry), each
for what its capabilities allow. A 401 is answered once per host by the challenge's scheme:
Basic with the credentials, or a Bearer token fetched from the realm for `repository:…:pull`.
HTTP comes from httpx, imported on the first pull only.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

from ...errdefs import ApplianceError, InvalidArgument, NotFound
from . import auth
from .hosts import PULL, RESOLVE, RegistryHost
from .reference import Reference

log = logging.getLogger("appliance.remotes")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])
MANIFEST_LIMIT = 4 << 20          # containerd's limit for a manifest or index body
USER_AGENT = "ctrappliance"

Credentials = Callable[[str], "tuple[str, str] | None"]   # host -> (username, secret)


class RegistryError(ApplianceError):
    """The registry answered with an error, or could not be reached (UNKNOWN, as containerd)."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass
class Timeouts:
    connect: float = 30.0
    read: float = 60.0     # no byte for this long fails a request


class Registry:
    """One repository on one registry, through its hosts. Close with `aclose()`."""

    def __init__(self, hosts: list[RegistryHost], repository: str,
                 credentials: Credentials | None = None, timeouts: Timeouts | None = None):
        import httpx   # first use only: it brings ssl and a dozen modules
        self._httpx = httpx
        self.hosts = hosts
        self.repository = repository
        self.credentials = credentials
        timeouts = timeouts or Timeouts()
        self._timeout = httpx.Timeout(timeouts.read, connect=timeouts.connect)
        self._clients: dict[int, object] = {}
        self._authorization: dict[str, str] = {}   # host -> Authorization header value

    async def aclose(self) -> None:
        for (_, sync), client in self._clients.items():
            await (asyncio.to_thread(client.close) if sync else client.aclose())
        self._clients.clear()

    # --- resolve ---------------------------------------------------------------

    async def resolve(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest or index `ref` names, and its bytes (digest verified)."""
        errors = []
        for host in self._hosts_for(RESOLVE):
            url = f"{host.base_url}/{self.repository}/manifests/{ref.object}"
            try:
                resp = await self._send(host, "GET", url, {"Accept": MANIFEST_ACCEPT})
            except RegistryError as exc:
                errors.append(exc)
                continue
            try:
                if resp.status_code == 404:
                    errors.append(NotFound(f"{ref}: not found"))
                    continue
                _raise_for_status(resp, host, f"manifests {ref.object}")
                body = await _read_limited(resp, MANIFEST_LIMIT)
            finally:
                await resp.aclose()
            return self._manifest_descriptor(ref, resp, body), body
        if errors and all(isinstance(e, NotFound) for e in errors):
            raise NotFound(f"{ref}: not found")
        raise errors[-1] if errors else RegistryError(f"no host of {ref.domain} can resolve")

    def _manifest_descriptor(self, ref: Reference, resp, body: bytes) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"{ref}: manifest digest {digest} does not match the reference")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        if media_type in ("", "application/json", "text/plain"):
            media_type = _media_type_of(body)
        if media_type in DOCKER_SCHEMA1:
            raise InvalidArgument(f"{ref}: Docker schema 1 manifests are not supported "
                                  f"(re-push the image with a current client)")
        return Descriptor(media_type, digest, len(body))

    # --- fetch -----------------------------------------------------------------

    async def fetch(self, desc: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` on, from the first host that has it. The caller
        checks the digest (it streams into a content writer that hashes as it writes)."""
        return self._stream(await self._get(desc, offset, sync=False))

    async def open_blob(self, desc: Descriptor, offset: int = 0) -> "Body":
        """As `fetch`, for a body read in a worker thread (`Body.chunks`): a big blob costs
        far less CPU there than through the event loop's transport."""
        return Body(await self._get(desc, offset, sync=True), self._httpx, self._timeout.read)

    async def _get(self, desc: Descriptor, offset: int, sync: bool):
        errors = []
        kind = "manifests" if desc.media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST,
                                                  DOCKER_MANIFEST) else "blobs"
        for host in self._hosts_for(PULL):
            url = f"{host.base_url}/{self.repository}/{kind}/{desc.digest}"
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            if kind == "manifests":
                headers["Accept"] = desc.media_type
            try:
                resp = await self._send(host, "GET", url, headers, sync)
            except RegistryError as exc:
                errors.append(exc)
                continue
            if resp.status_code == 404:
                await _close(resp)
                errors.append(NotFound(f"{desc.digest}: not found"))
                continue
            try:
                _raise_for_status(resp, host, f"{kind} {desc.digest}")
            except RegistryError:
                await _close(resp)
                raise
            if offset and resp.status_code != 206:   # no range support: start over
                await _close(resp)
                raise RegistryError(f"{host.host} ignored the range request for {desc.digest}")
            return resp
        if errors and all(isinstance(e, NotFound) for e in errors):
            raise NotFound(f"{desc.digest}: not found")
        raise errors[-1] if errors else RegistryError(f"no host can pull {desc.digest}")

    async def _stream(self, resp) -> AsyncIterator[bytes]:
        httpx = self._httpx
        try:
            async for chunk in resp.aiter_raw():   # as it arrives: progress is visible
                yield chunk
        except httpx.HTTPError as exc:
            raise _read_error(httpx, resp, exc, self._timeout.read) from None
        finally:
            await resp.aclose()

    # --- requests and authorisation -----------------------------------------------

    def _hosts_for(self, capability: str) -> list[RegistryHost]:
        return [h for h in self.hosts if capability in h.capabilities]

    def _client(self, host: RegistryHost, sync: bool = False):
        """One client per host (connections kept alive between requests); `sync`: the one
        used from worker threads."""
        key = (id(host), sync)
        client = self._clients.get(key)
        if client is None:
            make = self._httpx.Client if sync else self._httpx.AsyncClient
            client = make(verify=_tls_context(host), timeout=self._timeout,
                          follow_redirects=True, headers={"User-Agent": USER_AGENT})
            self._clients[key] = client
        return client

    async def _send(self, host: RegistryHost, method: str, url: str, headers: dict,
                    sync: bool = False):
        """One request (streamed), authorised after at most one 401 challenge."""
        httpx = self._httpx
        client = self._client(host, sync)
        for attempt in (1, 2):
            h = {k: ", ".join(v) for k, v in host.header.items()}
            h.update(headers)
            if host.host in self._authorization:
                h["Authorization"] = self._authorization[host.host]
            request = client.build_request(method, url, headers=h)
            try:
                if sync:
                    resp = await asyncio.to_thread(client.send, request, stream=True)
                else:
                    resp = await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise RegistryError(f"{method} {url}: timed out") from None
            except httpx.HTTPError as exc:
                raise RegistryError(f"{method} {url}: {exc}") from None
            if resp.status_code != 401 or attempt == 2:
                return resp
            challenges = auth.parse_challenges(resp.headers.get("www-authenticate", ""))
            authorization = await self._authorize(host, self._client(host), challenges)
            if authorization is None:   # nothing to answer with: the 401 is the answer
                return resp
            await _close(resp)
            self._authorization[host.host] = authorization
        raise AssertionError("unreachable")

    async def _authorize(self, host: RegistryHost, client, challenges) -> str | None:
        creds = self.credentials(host.host) if self.credentials else None
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                return "Bearer " + await self._token(host, client, challenge, creds)
            if challenge.scheme == "basic" and creds is not None:
                return auth.basic_header(*creds)
        return None

    async def _token(self, host, client, challenge, creds) -> str:
        """containerd's order and words: with credentials the OAuth2 POST, falling back to
        the GET with Basic auth where a token server has no POST (405 with a username, 404,
        401, 400); without credentials an anonymous GET."""
        scope = auth.pull_scope(self.repository)
        if creds and creds[1]:
            resp = await self._token_request(client, "POST", challenge.params["realm"],
                                             data=auth.oauth_form(challenge, scope, *creds))
            if resp.status_code != 200 and not (
                    resp.status_code in (404, 401, 400) or resp.status_code == 405 and creds[0]):
                raise _token_error("failed to fetch oauth token", resp)
            if resp.status_code != 200:
                resp = await self._token_request(client, "GET", auth.token_url(challenge, scope),
                                                 headers={"Authorization":
                                                          auth.basic_header(*creds)})
                if resp.status_code != 200:
                    raise _token_error("failed to fetch oauth token", resp)
        else:
            resp = await self._token_request(client, "GET", auth.token_url(challenge, scope))
            if resp.status_code != 200:
                raise _token_error("failed to fetch anonymous token", resp)
        try:
            return auth.token_from_response(resp.json())
        except ValueError as exc:
            raise RegistryError(f"failed to authorize: {exc}") from None

    async def _token_request(self, client, method: str, url: str, **kwargs):
        try:
            return await client.request(method, url, **kwargs)
        except self._httpx.HTTPError as exc:
            raise RegistryError(f"failed to authorize: {method} {url}: {exc}") from None


class Body:
    """A blob's response body, read in a worker thread."""

    def __init__(self, resp, httpx, read_timeout: float):
        self._resp = resp
        self._httpx = httpx
        self._read_timeout = read_timeout

    def chunks(self) -> Iterator[bytes]:
        """The bytes as they arrive (blocking); RegistryError when they stop coming."""
        httpx = self._httpx
        try:
            yield from self._resp.iter_raw()
        except httpx.HTTPError as exc:
            raise _read_error(httpx, self._resp, exc, self._read_timeout) from None
        finally:
            self._resp.close()

    def abort(self) -> None:
        """From another thread: a read waiting in `chunks` returns (with an error) now."""
        stream = self._resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _read_error(httpx, resp, exc, read_timeout: float) -> RegistryError:
    if isinstance(exc, httpx.TimeoutException):
        return RegistryError(f"reading {resp.request.url}: no data for {read_timeout:g}s")
    return RegistryError(f"reading {resp.request.url}: {exc}")


async def _close(resp) -> None:
    """Close a streamed response of either client."""
    if hasattr(resp.stream, "aclose"):
        await resp.aclose()
    else:
        await asyncio.to_thread(resp.close)


def _token_error(what: str, resp) -> RegistryError:
    return RegistryError(f"failed to authorize: {what}: unexpected status: "
                         f"{resp.status_code} {resp.reason_phrase}")


def _raise_for_status(resp, host: RegistryHost, what: str) -> None:
    if resp.status_code < 400:
        return
    message = f"pulling from host {host.host} failed with status code [{what}]: " \
              f"{resp.status_code} {resp.reason_phrase}"
    raise RegistryError(message)


async def _read_limited(resp, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"{resp.request.url}: manifest larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type_of(body: bytes) -> str:
    """The media type a manifest declares in its body (some registries send JSON as is)."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise RegistryError("the registry answered a manifest that is not JSON") from None
    if doc.get("mediaType"):
        return doc["mediaType"]
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _tls_context(host: RegistryHost):
    """verify= for httpx: the system store plus the host's CAs and client certificates."""
    import ssl
    if host.scheme == "http":
        return False
    ctx = ssl.create_default_context()
    for ca in host.ca_certs:
        ctx.load_verify_locations(cafile=ca)
    for cert, key in host.client_pairs:
        ctx.load_cert_chain(cert, key or None)
    if host.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
