"""eval/report.html in a real browser: headless Chromium (Debian's ``chromium``) runs its script,
the charts and the question table are there, the search filters, and a screenshot lands in the run dir.

CI installs chromium (.ci/run) and sets LMFORGE_REQUIRE_CHROMIUM=1, so there a missing browser fails
the test instead of skipping it.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
from browser import chromium

from lmforge.config import load_recipe
from lmforge.pipeline import run_recipe

pytestmark = pytest.mark.integration

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_headless_chromium(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    run_recipe(recipe)
    report = recipe.run_path() / "eval" / "report.html"
    assert report.is_file()
    html = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything from the web"

    url = report.resolve().as_uri()
    dom = browse(url, tmp_path / "profile-1", "--dump-dom").stdout
    assert 'data-ready="1"' in dom, "the report's script did not run"
    sets = json.loads((recipe.run_path() / "eval" / "summary.json").read_text())["sets"]
    assert dom.count('class="chart bar-chart"') == len(sets)
    assert dom.count('<rect class="bar"') == len(sets) * 2  # base and tuned
    assert 'class="chart loss-chart"' in dom and "<polyline" in dom
    rows = re.findall(r"<tr data-set=", dom)
    assert len(rows) == 4
    assert '<span id="shown">4</span>' in dom

    # The search box filters rows (preset from the address, as a link to a question would).
    filtered = browse(url + "#q=tell%20me%20fact%203", tmp_path / "profile-2", "--dump-dom").stdout
    assert '<span id="shown">1</span>' in filtered
    assert len(re.findall(r"<tr data-set=\"test\"[^>]*hidden", filtered)) == 3

    screenshot = recipe.run_path() / "eval" / "report.png"
    shot = browse(url, tmp_path / "profile-3", f"--screenshot={screenshot}", "--window-size=1280,1600")
    assert screenshot.is_file(), shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a page with charts and tables, not a blank one
