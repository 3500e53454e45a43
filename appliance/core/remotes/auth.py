"""Registry authentication, the pure part: `WWW-Authenticate` challenges and the token
request they call for (RFC 7235 and the distribution token spec).

A registry answers 401 with `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
Basic sends the credentials with every request; Bearer trades them (or nothing, for anonymous
pulls) at the realm for a token scoped to the repository.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?=\s|$|,)")


@dataclass
class Challenge:
    scheme: str                       # lower case: "basic", "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge of one `WWW-Authenticate` value; malformed parts are skipped."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME.match(header, pos)
        if not m:
            comma = header.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        challenge = Challenge(m.group(1).lower())
        challenges.append(challenge)
        pos = m.end()
        while pos < len(header):
            p = _PARAM.match(header, pos)
            if not p:
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            challenge.params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
            if pos < len(header) and header[pos] == ",":
                pos += 1
    return challenges


def basic_header(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def token_url(challenge: Challenge, scope: str) -> str:
    """The GET that fetches a bearer token for `scope` (credentials go as Basic auth)."""
    query = {}
    if challenge.params.get("service"):
        query["service"] = challenge.params["service"]
    scopes = [s for s in (challenge.params.get("scope", ""), scope) if s]
    url = challenge.params["realm"]
    if not query and not scopes:
        return url
    pairs = list(query.items()) + [("scope", s) for s in dict.fromkeys(scopes)]
    return url + ("&" if "?" in url else "?") + urlencode(pairs)


def oauth_form(challenge: Challenge, scope: str, username: str, secret: str) -> dict:
    """The OAuth2 POST containerd tries first when it has credentials: a password grant, or
    a refresh-token grant for an identity token (no username)."""
    scopes = [s for s in (challenge.params.get("scope", ""), scope) if s]
    form = {"scope": " ".join(dict.fromkeys(scopes)), "service": challenge.params.get("service", ""),
            "client_id": "containerd-client"}
    if username:
        form.update(grant_type="password", username=username, password=secret)
    else:
        form.update(grant_type="refresh_token", refresh_token=secret)
    return form


def token_from_response(body: dict) -> str:
    """`token`, or OAuth2's `access_token`, of a token server's JSON answer."""
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token server answered without a token")
    return token
