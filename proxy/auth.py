"""Who may write (upload, purge, unsafe methods). Pure."""
from __future__ import annotations

import hmac

from .forwarded import parse_address


def write_denial(
    tokens: tuple[str, ...], client: str | None, authorization: str | None, *, forwarded: bool = False
) -> tuple[int, str] | None:
    """None when the write is allowed, else (401 or 403, a message saying why).

    With tokens configured, `Authorization: Bearer <token>` must carry one of them
    (compared in constant time). Without tokens, only loopback clients may write;
    a request that an untrusted proxy forwarded (`forwarded`) is not loopback.
    """
    if tokens:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return 401, "writes need 'Authorization: Bearer <token>'"
        offered = credentials.strip().encode()
        if not any(hmac.compare_digest(offered, token.encode()) for token in tokens):
            return 403, "the bearer token is not valid for writes"
        return None
    address = parse_address(client) if client else None
    if address is not None and address.is_loopback and not forwarded:
        return None
    return 403, "writes are allowed from loopback only until write_tokens is configured"
