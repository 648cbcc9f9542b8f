"""The browser page in a real, headless Chromium: upload with progress, play, seek, purge, stats."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import REPO_ROOT, RunningServer

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
VIDEO = REPO_ROOT / "assets" / "video" / "sample.mp4"  # 5 s of H.264
TIMEOUT = 10.0  # seconds a page change may take before the test fails


@contextlib.contextmanager
def chromium(*flags: str) -> Iterator[Any]:
    """Headless Chromium driven by selenium, with these flags besides the usual ones."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER or ""), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def wait_for(check: Callable[[], Any], what: str) -> Any:
    """Poll until `check()` is truthy; fail after TIMEOUT, saying what did not happen."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def play_and_seek(browser: Any, video: Any) -> None:
    """The video plays, then seeks to 3.5 s (the player asks for that part with a Range request)."""
    browser.execute_script("arguments[0].play()", video)
    wait_for(lambda: browser.execute_script("return arguments[0].currentTime", video) > 0.2, "playback")
    browser.execute_script("arguments[0].currentTime = 3.5", video)
    wait_for(lambda: browser.execute_script("return !arguments[0].seeking && arguments[0].currentTime >= 3.5",
                                            video), "the seek")
    browser.execute_script("arguments[0].pause()", video)


def test_the_page_uploads_plays_seeks_and_purges(browser: Any, settings: Settings, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    settings = dataclasses.replace(settings, access_log=True, access_log_format="json")
    with RunningServer(settings) as server:
        browser.get(server.url + "/_edge/")
        text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
        wait_for(lambda: text("requests") not in ("", "–"), "the stats")
        wait_for(lambda: "/video/clip.mp4" in text("files"), "the origin's files")
        requests_before = int(text("requests"))

        # upload, watching the status line that the upload's progress events write
        browser.execute_script("""
            window.progressTexts = [];
            new MutationObserver(() => window.progressTexts.push(document.getElementById('upload-status').textContent))
              .observe(document.getElementById('upload-status'), {childList: true, characterData: true, subtree: true});
        """)
        folder = browser.find_element(By.ID, "upload-folder")
        folder.clear()
        folder.send_keys("/films/")
        browser.find_element(By.ID, "upload-file").send_keys(str(VIDEO))
        browser.find_element(By.ID, "upload-button").click()
        wait_for(lambda: text("upload-status").startswith("201"), "the upload's answer")
        assert text("upload-status") == "201: /films/sample.mp4 (46.4 KiB)"
        progress = browser.execute_script("return window.progressTexts")
        assert "46.4 KiB of 46.4 KiB" in progress, progress  # the progress handler ran, with a known total
        assert browser.find_element(By.ID, "upload-progress").get_property("value") == 1
        assert (Path(settings.origin) / "films" / "sample.mp4").read_bytes() == VIDEO.read_bytes()

        # play the upload from the origin's listing, then seek
        row = wait_for(lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, "#files tbody tr")
                                if r.text.startswith("/films/sample.mp4")], "the upload in the origin's files")
        row[0].find_element(By.TAG_NAME, "button").click()
        play_and_seek(browser, browser.find_element(By.ID, "player"))

        # the stats moved; three hits, which the listing shows once they are flushed (every 2 s)
        wait_for(lambda: int(text("requests")) > requests_before, "the request count to move")
        assert text("bytes-origin") != "0 B"
        for _ in range(3):
            assert httpx.get(server.url + "/films/sample.mp4").headers["x-cache"] == "HIT"
        wait_for(lambda: text("hit-ratio") not in ("–", "0.0 %"), "the hit ratio to move")
        assert text("bytes-cache") != "0 B"

        def listed_with_hits() -> bool:
            browser.find_element(By.ID, "cached-refresh").click()
            time.sleep(0.2)
            return "/films/sample.mp4 46.4 KiB 1 / 1 3 " in text("cached")

        wait_for(listed_with_hits, "the cached listing with the hits")

        browser.save_screenshot(str(tmp_path / "edge-page.png"))

        # purge it from the page
        browser.find_element(By.ID, "purge-path").send_keys("/films/sample.mp4")
        browser.find_element(By.ID, "purge-button").click()
        wait_for(lambda: text("purge-status"), "the purge's answer")
        assert text("purge-status") == "purged 1 (/films/sample.mp4)"
        wait_for(lambda: "/films/sample.mp4" not in text("cached"), "the purged entry to leave the listing")
        cached = httpx.get(server.url + "/_edge/objects").json()["items"]
        assert "/films/sample.mp4" not in [o["key"] for o in cached]
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    video_gets = [r for r in records if r["path"] == "/films/sample.mp4" and r["method"] == "GET"
                  and "Chrome" in (r["user_agent"] or "")]
    assert video_gets and all(r["range"] for r in video_gets), video_gets  # the player asks with Range
    assert {r["status"] for r in video_gets} <= {200, 206}
    assert [r["status"] for r in records if r["method"] == "PUT"] == [201]
    assert [r["status"] for r in records if r["path"].startswith("/_edge/purge")] == [200]
