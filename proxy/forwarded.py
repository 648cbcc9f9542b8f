"""Who the client is, and the public base URL, behind trusted proxies. Pure."""
from __future__ import annotations

import functools
import ipaddress
import re

from .http.directives import Fields

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in proxies)


def is_trusted(peer: str | None, proxies: tuple[Network, ...]) -> bool:
    return _trusted(parse_address(peer) if peer else None, proxies)


def client_address(peer: str | None, forwarded_for: str | None, proxies: tuple[Network, ...]) -> str | None:
    """The client's address: the peer, or, when the peer is a trusted proxy, the last
    address in X-Forwarded-For that is not one of the trusted proxies. None if unknown."""
    address = parse_address(peer) if peer else None
    if not _trusted(address, proxies) or not forwarded_for:
        return str(address) if address else None
    for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None
        if not _trusted(hop_address, proxies):
            return str(hop_address)
    return str(address)


# Request fields that tell an origin who or where the client is, or make it serve something
# else, without being part of the cache key: a client who could set them could poison the
# cache for everyone (the edge sets the forwarding fields itself, below).
UNKEYED_FIELDS = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl", "x-forwarded-uri",
    "x-original-url", "x-original-uri", "x-rewrite-url", "x-original-host", "x-host", "x-http-host-override",
    "x-http-method-override", "x-http-method", "x-method-override", "x-real-ip", "true-client-ip",
    "x-client-ip", "x-cluster-client-ip", "front-end-https", "x-url-scheme", "x-scheme",
})


def forwarding_headers(
    headers: list[tuple[str, str]], peer: str | None, scheme: str, public_host: str | None,
    proxies: tuple[Network, ...],
) -> Fields:
    """The client's request fields as the origin gets them (indexed by name: see Fields).

    Unkeyed fields are dropped; the edge adds X-Forwarded-For / -Proto (and -Host only
    for a configured public URL) and Forwarded (RFC 7239). A trusted proxy's chain is
    kept and the peer appended; anyone else's is replaced.
    """
    trusted, hop, element = _peer(peer, scheme, public_host, proxies)
    kept, prior_for, prior, protos = [], [], [], []
    for n, v in headers:  # one pass: this runs for every request
        low = n.lower()
        if low not in UNKEYED_FIELDS:
            kept.append((n, v))
        elif low == "x-forwarded-for":
            prior_for.append(v)
        elif low == "forwarded":
            prior.append(v)
        elif low == "x-forwarded-proto":
            protos.append(v)
    chain = [hop]
    forwarded = [element]
    if trusted:
        chain = [*prior_for, hop]
        forwarded = [*prior, *forwarded]
        proto = protos[0].split(",")[0].strip().lower() if protos else ""
        scheme = proto if proto in ("http", "https") else scheme
    out = [*kept, ("X-Forwarded-For", ", ".join(chain)), ("X-Forwarded-Proto", scheme)]
    if public_host:
        out.append(("X-Forwarded-Host", public_host))
    out.append(("Forwarded", ", ".join(forwarded)))
    return Fields(out)


@functools.lru_cache(maxsize=4096)
def _peer(
    peer: str | None, scheme: str, public_host: str | None, proxies: tuple[Network, ...]
) -> tuple[bool, str, str]:
    """Is the peer a trusted proxy; its address as X-Forwarded-For names it; its Forwarded element.
    (Worked out once per peer: a connection's requests, a proxy's clients, come from a few.)"""
    address = parse_address(peer) if peer else None
    return _trusted(address, proxies), str(address) if address else "unknown", \
        _forwarded_element(address, scheme, public_host)


def _forwarded_element(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, scheme: str, host: str | None
) -> str:
    """One RFC 7239 element: for=, proto= and host= (IPv6 quoted and bracketed, section 6)."""
    if address is None:
        node = "unknown"
    elif address.version == 6:
        node = f'"[{address}]"'
    else:
        node = str(address)
    element = f"for={node};proto={scheme}"
    if host:
        element += f';host="{host}"' if ":" in host else f";host={host}"
    return element


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def base_url(
    configured: str,
    scheme: str,
    host: str | None,
    peer: str | None,
    forwarded_proto: str | None,
    forwarded_host: str | None,
    proxies: tuple[Network, ...],
) -> str:
    """The base of public URLs: the configured one, else from the request.

    X-Forwarded-Proto and X-Forwarded-Host count only when the peer is a trusted
    proxy; a Host that is not a plain host[:port] is not used.
    """
    if configured:
        return configured.rstrip("/")
    if _trusted(parse_address(peer) if peer else None, proxies):
        proto = (forwarded_proto or "").split(",")[0].strip().lower()
        scheme = proto if proto in ("http", "https") else scheme
        host = (forwarded_host or "").split(",")[0].strip() or host
    if not host or not _HOST.fullmatch(host):
        host = "localhost"
    return f"{scheme}://{host}"
