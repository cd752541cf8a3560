"""`lmforge serve` as a real process for the integration tests: start on a port, wait for /health, stop.

Used by test_serve*.py and test_synth.py; with ``faults``, the server runs through
serve_with_faults.py (test-only faults around the production app). A plain module rather than a
tests/integration/conftest.py: a second conftest module would take the name ``conftest`` from
tests/conftest.py, and the test modules' ``from conftest import ...`` lines would break.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

START_TIMEOUT_S = 120
WITH_FAULTS = Path(__file__).with_name("serve_with_faults.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    args: list[str], env: dict[str, str], log: Path, port: int | None = None, faults: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """``lmforge serve ARGS`` on ``port`` (default: a free one), output to ``log``; returns once /health answers.

    Args:
        args: the ``lmforge serve`` arguments (without ``--port``).
        env: the server's environment (``LMFORGE_API_KEY`` turns the key on).
        log: file that receives the server's stdout and stderr.
        port: TCP port on 127.0.0.1 (default: a free one).
        faults: test-only faults (see serve_with_faults.py); None runs the plain production server.

    Raises:
        AssertionError: the server exited, or did not answer within START_TIMEOUT_S (with its log).
    """
    port = port or free_port()
    if faults is None:
        command = [sys.executable, "-m", "lmforge.cli", "serve", *args, "--port", str(port)]
    else:
        command = [sys.executable, str(WITH_FAULTS), json.dumps(faults), *args, "--port", str(port)]
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"server did not start in time:\n{log.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    """Ask the server to stop (SIGTERM); kill it if it has not exited after 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
