"""Adaptive streams made by ffmpeg at test time, once per test session: 60 one-second segments
of a tiny test picture and tone, as HLS (fMP4 and MPEG-TS, each with a master playlist of two
renditions; single-file byte-range playlists of both) and DASH (SegmentTemplate with a
SegmentTimeline and $Time$, and with $Number%05d$ and a @duration)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SEGMENTS = 60
HLS_FMP4 = "hls-fmp4/master.m3u8"  # renditions 0/ (64x48) and 1/ (32x24), EXT-X-MAP init sections
HLS_TS = "hls-ts/master.m3u8"
BYTES_FMP4 = "hls-bytes/fmp4.m3u8"  # one file: EXT-X-MAP with BYTERANGE, EXT-X-BYTERANGE segments
BYTES_TS = "hls-bytes/ts.m3u8"
DASH_TIMELINE = "dash-timeline/stream.mpd"  # video 0 (64x48), video 1 (32x24), audio 2
DASH_NUMBER = "dash-number/stream.mpd"

_SOURCE = ["-f", "lavfi", "-i", f"testsrc=duration={SEGMENTS}:size=64x48:rate=10",
           "-f", "lavfi", "-i", f"sine=duration={SEGMENTS}:sample_rate=8000"]
_ENCODE = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-keyint_min", "10", "-sc_threshold", "0",
           "-c:a", "aac", "-b:a", "16k"]
_TWO_VIDEOS = ["-b:v:0", "120k", "-b:v:1", "40k", "-s:v:1", "32x24"]
_HLS = ["-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod"]
_VARIANTS = ["-map", "0:v", "-map", "1:a", "-map", "0:v", "-map", "1:a", *_TWO_VIDEOS,
             "-master_pl_name", "master.m3u8", "-var_stream_map", "v:0,a:0 v:1,a:1"]
_DASH = ["-map", "0:v", "-map", "0:v", "-map", "1:a", *_TWO_VIDEOS, "-f", "dash", "-seg_duration", "1",
         "-use_template", "1", "-adaptation_sets", "id=0,streams=v id=1,streams=a"]
_OUTPUTS = [
    [*_VARIANTS, *_HLS, "-hls_segment_type", "fmp4", "-hls_segment_filename", "hls-fmp4/%v/seg%03d.m4s",
     "hls-fmp4/%v/index.m3u8"],
    [*_VARIANTS, *_HLS, "-hls_segment_filename", "hls-ts/%v/seg%03d.ts", "hls-ts/%v/index.m3u8"],
    [*_HLS, "-hls_segment_type", "fmp4", "-hls_flags", "single_file", BYTES_FMP4],
    [*_HLS, "-hls_flags", "single_file", BYTES_TS],
    # make_zero: else the audio's priming samples give its first segment a negative $Time$, in its name only
    [*_DASH, "-avoid_negative_ts", "make_zero", "-use_timeline", "1",
     "-media_seg_name", "chunk-$RepresentationID$-$Time$.m4s", DASH_TIMELINE],
    [*_DASH, "-use_timeline", "0", DASH_NUMBER],
]


@dataclass(frozen=True)
class Streams:
    root: Path

    def files(self, folder: str) -> dict[str, bytes]:
        """Every file under `folder`, by its path from the root ('hls-ts/0/seg000.ts')."""
        return {p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in sorted((self.root / folder).rglob("*")) if p.is_file()}

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


_built: dict[str, Streams] = {}


def build(root: Path) -> Streams:
    """Run the ffmpeg commands side by side into `root` (a few seconds)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)")
    for folder in ("hls-fmp4", "hls-ts", "hls-bytes", "dash-timeline", "dash-number"):
        (root / folder).mkdir(parents=True)
    runs = [subprocess.Popen(["ffmpeg", "-v", "error", "-nostdin", "-y", *_SOURCE, *_ENCODE, *output], cwd=root,
                             stderr=subprocess.PIPE) for output in _OUTPUTS]
    for run in runs:
        _, errors = run.communicate(timeout=120)
        assert run.returncode == 0, errors.decode(errors="replace")
    return Streams(root)


@pytest.fixture(scope="session", name="streams")
def streams_fixture(tmp_path_factory: pytest.TempPathFactory) -> Streams:
    """The streams, built once per session whichever test modules use them."""
    if "made" not in _built:
        _built["made"] = build(tmp_path_factory.mktemp("streams"))
    return _built["made"]
