"""Who may write (upload, purge, unsafe methods): bearer tokens, or loopback when none are set."""
from __future__ import annotations

import hmac
import ipaddress


def write_denial(tokens: tuple[str, ...], client_host: str | None, authorization: str | None) -> tuple[int, str] | None:
    """None when the write is allowed, else (401 or 403, a message saying why).

    With tokens configured, `Authorization: Bearer <token>` must carry one of them
    (compared in constant time). Without tokens, only loopback clients may write.
    """
    if tokens:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return 401, "writes need 'Authorization: Bearer <token>'"
        offered = credentials.strip().encode()
        if not any(hmac.compare_digest(offered, token.encode()) for token in tokens):
            return 403, "the bearer token is not valid for writes"
        return None
    if client_host is not None and _is_loopback(client_host):
        return None
    return 403, "writes are allowed from loopback only until write_tokens is configured"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
