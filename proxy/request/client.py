"""Who the client is, and the public base URL, behind trusted proxies. Pure."""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..http.directives import Fields

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


@dataclass(frozen=True)
class Client:
    """Who sent a request, as far as the edge can tell: the address (None: unknown), and the
    scheme and Host it used to reach the first proxy the edge trusts (else the edge itself)."""

    address: str | None
    scheme: str
    host: str | None


def identify(peer: str | None, scheme: str, fields: Iterable[tuple[bytes, bytes]], proxies: tuple[Network, ...],
             header: str = "x-forwarded-for") -> Client:
    """The one place that decides who the client is (write authorization, the access log, the
    base URL, connection limits).

    Forwarding fields count only from a peer in `proxies`, and only the kind those proxies
    write (`header`: X-Forwarded-For, or Forwarded, RFC 7239), since a client can send the
    other through them untouched. Every line of the field counts (a proxy may add a line of
    its own rather than extend the client's: RFC 9110 section 5.3), read right to left: each
    hop was written by the proxy after it, so the first hop that is not a trusted proxy is
    the client; a hop that is not an address makes the client unknown. The scheme and host
    are those the trusted proxies were asked for (X-Forwarded-Proto / -Host, the nearest
    proxy's value; or that client's own Forwarded element).
    """
    address = parse_address(peer) if peer else None
    host = None
    chain: list[bytes] = []
    protos: list[bytes] = []
    hosts: list[bytes] = []
    wanted = b"forwarded" if header == "forwarded" else b"x-forwarded-for"
    for name, value in fields:
        if name == b"host":
            host = value
        elif name == wanted:
            chain.append(value)
        elif name == b"x-forwarded-proto":
            protos.append(value)
        elif name == b"x-forwarded-host":
            hosts.append(value)
    plain = _text(host)
    if not _trusted(address, proxies) or not chain:
        return Client(str(address) if address else None, scheme, plain)
    if wanted == b"forwarded":
        element = _client_element(forwarded_elements(b",".join(chain).decode("latin-1")), proxies)
        client = _node(element.get("for", "unknown"))
        proto, host_of = element.get("proto", ""), element.get("host") or plain
    else:
        client = _client_hop(b",".join(chain).decode("latin-1").split(","), proxies)
        proto = _last(protos)
        host_of = _last(hosts) or plain
    proto = proto.strip().lower()
    return Client(str(client) if client else None, proto if proto in ("http", "https") else scheme, host_of)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1").strip() if value is not None else None


def _last(values: list[bytes]) -> str:
    """The nearest proxy's value of a field that may hold a list: its last item."""
    return b",".join(values).decode("latin-1").rpartition(",")[2].strip() if values else ""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _client_hop(hops: list[str], proxies: tuple[Network, ...]) -> Address | None:
    """Right to left, the first hop that is not a trusted proxy (None: not an address)."""
    found: Address | None = None
    for hop in reversed([h for h in hops if h.strip()]):
        found = _node(hop)
        if found is None or not _trusted(found, proxies):
            return found
    return found  # every hop a trusted proxy: the first of them


def _client_element(elements: list[dict[str, str]], proxies: tuple[Network, ...]) -> dict[str, str]:
    """Right to left, the first Forwarded element whose `for` is not a trusted proxy."""
    for element in reversed(elements):
        node = _node(element.get("for", "unknown"))
        if node is None or not _trusted(node, proxies):
            return element
    return elements[0] if elements else {}


def _node(text: str) -> Address | None:
    """An address from an X-Forwarded-For hop or a Forwarded `for` (RFC 7239 section 6: with or
    without a port, IPv6 in brackets); None for `unknown`, an obfuscated name or garbage."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return parse_address(text)


_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


def forwarded_elements(value: str) -> list[dict[str, str]]:
    """The elements of a Forwarded field value (RFC 7239 section 4), each as its parameters
    (names lower-case, quoted strings unquoted). A malformed element ends the list there: what
    follows cannot be told apart from what a client wrote."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    at = 0
    while at < len(value):
        match = _PAIR.match(value, at)
        if match is None:
            return elements
        raw = match.group(2)
        element[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        at = match.end()
        if at < len(value) and value[at] == ",":
            elements.append(element)
            element = {}
        elif at < len(value) and value[at] != ";":
            return elements
        at += 1
    if element:
        elements.append(element)
    return elements


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
        proto = ",".join(protos).rpartition(",")[2].strip().lower()  # the nearest proxy's (see identify)
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


def base_url(configured: str, client: Client) -> str:
    """The base of public URLs: the configured one, else the scheme and host the client used
    (a Host that is not a plain host[:port] is not used)."""
    if configured:
        return configured.rstrip("/")
    host = client.host
    if not host or not _HOST.fullmatch(host):
        host = "localhost"
    return f"{client.scheme}://{host}"
