"""Who may write (upload, purge, unsafe methods). Pure."""
from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..request.client import parse_address

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """`scheme://host:port` of an http(s) URL or Origin value (RFC 6454), with the port
    always written and the host lower-cased; None for `null` and anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port or _DEFAULT_PORTS[scheme]}"


def cross_site_reason(sec_fetch_site: str | None, origins: Iterable[str], own: set[str]) -> str | None:
    """Why a browser sent this request from another site or origin, or None.

    `Sec-Fetch-Site: cross-site` or `same-site` (another page, even on this host), or an
    `Origin` that is not one of the edge's own origins (`null` from a sandboxed page
    included). `same-origin`, `none` and requests without these fields (curl, scripts)
    pass.
    """
    site = (sec_fetch_site or "").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"a {site} browser request may not write without a bearer token (Sec-Fetch-Site: {site})"
    for value in origins:
        if origin_of(value) not in own:
            return f"a request from another origin ({value.strip()}) may not write without a bearer token"
    return None


def names_this_machine(host: str | None, public_host: str | None) -> bool:
    """Does a Host field name this machine: `localhost` (RFC 6761 section 6.3), a loopback
    address, or the host of the configured public URL? (A missing Host names nothing else.)"""
    if not host:
        return True
    try:
        name = urlsplit("//" + host.strip()).hostname or ""
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = parse_address(name)
    if address is not None:
        return address.is_loopback
    return public_host is not None and name == public_host.lower()


def _token_denial(tokens: tuple[str, ...], authorization: str | None) -> tuple[int, str] | None:
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return 401, "writes need 'Authorization: Bearer <token>'"
    offered = credentials.strip().encode()
    if not any(hmac.compare_digest(offered, token.encode()) for token in tokens):
        return 403, "the bearer token is not valid for writes"
    return None


def write_denial(
    tokens: tuple[str, ...], client: str | None, authorization: str | None, *, forwarded: bool = False,
    cross_site: str | None = None, browser_elsewhere: str | None = None,
) -> tuple[int, str] | None:
    """None when the write is allowed, else (401 or 403, a message saying why).

    With tokens configured, `Authorization: Bearer <token>` must carry one of them
    (compared in constant time). Without tokens, only loopback clients may write;
    a request that an untrusted proxy forwarded (`forwarded`) is not loopback.
    A browser request from another site or origin (`cross_site`, the reason) is
    refused (403) unless it carries a valid token, whoever the client is.
    A browser's loopback write without a token must also name this machine in Host
    (`browser_elsewhere`: the Host it named instead): a page whose own DNS name now
    points to 127.0.0.1 (DNS rebinding) is same-origin with itself, not with the edge.
    """
    token = _token_denial(tokens, authorization) if tokens else None
    if tokens and token is None:
        return None
    if cross_site is not None:
        return 403, cross_site
    if token is not None:
        return token
    address = parse_address(client) if client else None
    if address is None or not address.is_loopback or forwarded:
        return 403, "writes are allowed from loopback only until write_tokens is configured"
    if browser_elsewhere is not None:
        return 403, (f"a browser's write without a bearer token must address this machine as localhost or a "
                     f"loopback address, not {browser_elsewhere} (a name pointed at 127.0.0.1: DNS rebinding)")
    return None
