"""Who may write, for a request: the edge's side of auth.py's rules (the client behind trusted
proxies, the edge's own origins, the Host a browser named)."""
from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..config import Settings
from ..request.client import Client, base_url, identify, is_trusted
from ..server.texts import text
from .auth import cross_site_reason, names_this_machine, origin_of, write_denial

_FORWARDED_FIELDS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto")


class WriteGuard:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.public_hostname = urlsplit(settings.public_base_url).hostname

    def who(self, request: Request) -> Client:
        """Who sent this request (request.client.identify: behind trusted proxies, the client they name)."""
        peer = request.client.host if request.client else None
        return identify(peer, request.scope.get("scheme", "http"), request.scope["headers"], self.settings.proxies,
                        self.settings.forwarded_header)

    def public_base(self, request: Request, configured: str) -> str:
        """The base URL of this request: `configured`, else the scheme and host its client used."""
        return base_url(configured, self.who(request))

    def own_origins(self, request: Request) -> set[str]:
        """The origins a same-origin browser request to this edge names in `Origin`."""
        bases = {self.public_base(request, self.settings.public_base_url)}
        if request.headers.get("host"):
            bases.add(self.public_base(request, ""))
        return {o for o in map(origin_of, bases) if o is not None}

    def refusal(self, request: Request) -> Response | None:
        """401/403 unless this request may write (uploads, purges, other methods)."""
        settings = self.settings
        peer = request.client.host if request.client else None
        proxied = any(name in request.headers for name in _FORWARDED_FIELDS)
        cross_site = cross_site_reason(request.headers.get("sec-fetch-site"), request.headers.getlist("origin"),
                                       self.own_origins(request))
        host = request.headers.get("host")
        browser = "sec-fetch-site" in request.headers or "origin" in request.headers
        elsewhere = host if browser and not names_this_machine(host, self.public_hostname) else None
        denial = write_denial(settings.tokens, self.who(request).address, request.headers.get("authorization"),
                              forwarded=proxied and not is_trusted(peer, settings.proxies), cross_site=cross_site,
                              browser_elsewhere=elsewhere)
        if denial is None:
            return None
        headers = {"WWW-Authenticate": 'Bearer realm="edgecache"'} if denial[0] == 401 else None
        return text(denial[0], f"{'Unauthorized' if denial[0] == 401 else 'Forbidden'}: {denial[1]}", headers)
