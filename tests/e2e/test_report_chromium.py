"""The report in a real browser: headless Chromium loads it from a file with no network,
runs its script without a console message, and the screenshot shows the coloured charts.

Chromium comes from Debian (``scripts/install-chromium.sh``). Without it the tests skip,
except in CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from polyroute.cli import _make_engine, build_parser
from polyroute.report import PALETTE, write_report
from polyroute.schema import RunResult
from polyroute.taskfile import load_task

from ..conftest import EXAMPLES

CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] \"(?P<message>.*)\", source: (?P<source>\S+)")


def chromium() -> str:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed in CI: run scripts/install-chromium.sh in .ci/run")
    pytest.skip("chromium is not installed (sudo scripts/install-chromium.sh); CI fails here")


def browse(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def console_messages(stderr: str) -> list[str]:
    return [m.group("message") for m in CONSOLE.finditer(stderr)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    args = build_parser().parse_args(
        ["run", "x", "--time-scale", "0.001", "--fail", "claude-sonnet-4-5=529x9"]
    )
    result: RunResult = asyncio.run(
        _make_engine(args).run(load_task(EXAMPLES / "code_review.json"))
    )
    out = tmp_path_factory.mktemp("report")
    write_report(result, out)
    return out / "report.html"


def test_the_console_check_catches_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>notDefined();</script>", encoding="utf-8")
    proc = browse(page.as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("notDefined" in m for m in console_messages(proc.stderr)), proc.stderr[-2000:]


def test_report_renders_and_its_script_runs_cleanly(report: Path, tmp_path: Path) -> None:
    proc = browse(report.as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    source = report.read_text(encoding="utf-8")
    ready = re.search(r'data-report-ready="(\d+)"', proc.stdout)
    assert ready, "the page script did not finish"
    assert int(ready.group(1)) == source.count(' data-step="') > 0
    for marker in ('<svg class="plan"', '<svg class="timeline"', 'class="card decision"'):
        assert marker in proc.stdout


def test_screenshot_shows_the_coloured_plan_and_timeline(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = browse(report.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,1800")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 1800)
        colours = {c: n for n, c in rgb.getcolors(maxcolors=2_000_000) or []}
    header = rgb.getpixel((5, 5))
    assert isinstance(header, tuple) and sum(header[:3]) < 200, "the dark header is drawn"
    first_model = tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
    assert colours.get(first_model, 0) > 2000, "the first model's colour fills nodes and bars"
    assert len(colours) > 500
