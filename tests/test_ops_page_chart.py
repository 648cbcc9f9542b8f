"""The page's hit ratio over time, in a real, headless Chromium: each refresh of the metrics adds
a point per series, at the share of bytes and of requests served from the cache since the last."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import RunningServer
from tests.test_ops_browser import CHROMIUM, DRIVER, browser, wait_for  # noqa: F401  # the fixture and the poll

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")


def points(driver: Any, series: str) -> list[tuple[float, float]]:
    text = driver.find_element("id", series).get_attribute("points") or ""
    return [(float(x), float(y)) for x, y in (p.split(",") for p in text.split())]


def test_the_chart_draws_each_interval_s_hit_ratios(settings: Settings, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    with RunningServer(settings) as server, httpx.Client(base_url=server.url) as c:
        browser.get(server.url + "/_edge/")
        wait_for(lambda: browser.find_element("id", "requests").text not in ("", "–"), "the first stats")
        browser.execute_script("for (let id = 1; id < 1000; id++) clearInterval(id);")  # refreshed by hand now
        refresh = "refreshStats().then(arguments[arguments.length - 1]);"
        browser.execute_async_script(refresh)
        before = len(points(browser, "hit-bytes"))
        for _ in range(4):  # between two refreshes: one miss and three hits of the same 1000 bytes
            assert c.get("/dir/a%20b.webm").status_code == 200
        browser.execute_async_script(refresh)
        drawn = points(browser, "hit-bytes")
        (x, y), = drawn[-1:]
        (_, requests_y), = points(browser, "hit-requests")[-1:]
        assert len(drawn) == before + 1 and x == 300.0  # one more point, the newest at the right edge
        assert y == 100 - 100 * 3 / 4 and requests_y == 100 - 100 * 3 / 4  # 3 of 4 requests, 3 of 4 bytes
