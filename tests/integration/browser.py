"""The system's Chromium for the browser tests (test_report.py, test_studio.py).

A plain module, like server_process.py (a second conftest would shadow tests/conftest.py). CI installs
chromium (.ci/run) and sets LMFORGE_REQUIRE_CHROMIUM=1: there a missing browser fails the test instead
of skipping it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def chromium() -> str:
    """Path of the Chromium executable; skips the test (fails it under LMFORGE_REQUIRE_CHROMIUM) without one."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("LMFORGE_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")
