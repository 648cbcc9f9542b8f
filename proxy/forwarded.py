"""Who the client is, and the public base URL, behind trusted proxies. Pure."""
from __future__ import annotations

import ipaddress
import re

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
