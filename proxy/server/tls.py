"""HTTPS: a server TLS context from PEM files, and its certificate replaced while it serves."""
from __future__ import annotations

import ssl


class TLSError(ValueError):
    """The certificate or key cannot be used; the message says which file and why."""


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TLSError(f"cannot read {e.filename}: {e.strerror}") from None
    except (OSError, ssl.SSLError) as e:
        raise TLSError(f"cannot use the certificate {cert} with the key {key}: {e}") from None


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A context for serving HTTPS: Python's secure defaults for a server (certificate
    checks off, as a server does not ask for client certificates), TLS 1.2 or newer,
    HTTP/1.1 offered by ALPN; `cert` may hold the whole chain, leaf first."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    _load(context, cert, key)
    return context


def reload(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Serve the certificate now in `cert` / `key` from the next handshake on; connections
    made before keep theirs. The files are checked in a context of their own first, so a bad
    pair (a new certificate with the old key, say) leaves the served one as it was."""
    server_context(cert, key)
    _load(context, cert, key)
