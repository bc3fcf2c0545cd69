"""devtools/screenshots.py (`make screenshots`) makes every picture the README shows, from a
seeded local stack in headless Chromium."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import browser as chromium  # devtools/browser.py
import pytest
from screenshots import SHOTS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium.available(), reason="chromium is not installed (scripts/ensure-system-packages.sh installs it)"
    ),
]
ROOT = Path(__file__).resolve().parents[2]


def test_the_script_makes_every_picture_the_readme_shows(tmp_path):
    done = subprocess.run(
        [sys.executable, "devtools/screenshots.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    made = {path.name for path in tmp_path.glob("*.png")}
    assert made == {shot.filename for shot in SHOTS.values()}
    # The README's pictures; the others in docs/img are the operator's (render_dashboards.py).
    drawn = {"dashboard.png", "trace-token-fetch.png"} | {p.name for p in (ROOT / "docs" / "img").glob("panel-*.png")}
    assert made == {path.name for path in (ROOT / "docs" / "img").glob("*.png")} - drawn
    for shot in SHOTS.values():
        for data in ((tmp_path / shot.filename).read_bytes(), (ROOT / "docs" / "img" / shot.filename).read_bytes()):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = struct.unpack(">II", data[16:24])
            assert (width, height) == (shot.viewport["width"], shot.viewport["height"]), shot.filename
            assert len(data) > 20_000, f"{shot.filename} looks blank ({len(data)} bytes)"
