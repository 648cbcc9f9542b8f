"""No request, however malformed, produces a 500; the pure rules import no I/O libraries."""
from __future__ import annotations

import re
import subprocess
import sys

import anyio
import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import Settings
from tests.conftest import REPO_ROOT

_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
_field_names = st.sampled_from(
    ["range", "if-range", "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "accept"]
)
_paths = st.one_of(
    st.sampled_from(["/video/clip.mp4", "/small.txt", "/", "/assets/small.txt", "/get_video_by_name/clip.mp4"]),
    st.text(max_size=40).map(lambda t: "/" + t),
)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]),
    path=_paths,
    headers=st.lists(st.tuples(_field_names, _header_text), max_size=6),
)
def test_no_request_produces_a_server_error(settings: Settings, method: str, path: str, headers: list) -> None:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)

    async def go() -> int:
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as c:
                raw_path = path.encode("utf-8", "surrogateescape")
                request = c.build_request(
                    method, "http://edge.test/", headers=[(n, v.encode("latin-1")) for n, v in headers]
                )
                request.url = request.url.copy_with(raw_path=_quote(raw_path))
                return (await c.send(request)).status_code
        finally:
            await app.state.service.aclose()  # what the lifespan does at shutdown

    status = anyio.run(go)
    assert status < 500


def _quote(raw: bytes) -> bytes:
    """Percent-encode everything but unreserved characters and '/', so any path is a valid target."""
    safe = b"/-._~abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return b"".join(bytes([c]) if c in safe else b"%%%02X" % c for c in raw)


def test_pure_rules_import_no_io_libraries() -> None:
    code = (
        "import sys, proxy.http.plan, proxy.http.ranges, proxy.http.conditional, proxy.http.headers,"
        " proxy.http.cache, proxy.http.freshness, proxy.http.directives, proxy.http.cachestatus,"
        " proxy.request.paths, proxy.request.client;"
        "bad = [m for m in ('starlette', 'httpx', 'anyio', 'diskcache', 'uvicorn', 'socket', 'asyncio')"
        " if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _edgecache_imports(package: str) -> set[str]:
    """The edgecache modules and packages a package's modules import, outside itself."""
    found: set[str] = set()
    for module in (REPO_ROOT / "proxy" / package).glob("*.py"):
        found.update(re.findall(r"^\s*from \.\.([a-z_]+)", module.read_text(), flags=re.MULTILINE))
        found.update(re.findall(r"^\s*(?:from|import) proxy\.([a-z_]+)", module.read_text(), flags=re.MULTILINE))
    return found


def test_the_rules_sit_at_the_bottom() -> None:
    """Imports point down where the rules live: the pure HTTP rules and the cache policy import
    nothing else of edgecache, and the store only those (and the file and page cache helpers)."""
    assert _edgecache_imports("http") == set()
    assert _edgecache_imports("policy") == set()
    assert _edgecache_imports("store") <= {"files", "pagecache", "http", "policy"}
    assert "server" in _edgecache_imports("writes")  # the check sees imports (a test that can fail)
