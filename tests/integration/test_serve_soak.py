"""Soak: `lmforge serve` under 2 minutes of mixed traffic at concurrency 32 never answers 5xx and does not leak.

A tiny random Llama is served on 127.0.0.1 with an API key (``LMFORGE_API_KEY``). 32 asyncio workers
drive it with the official ``openai`` client until a fixed deadline, each cycling through a fixed mix
of request kinds: valid chat completions, streamed ones, oversized bodies (over
``--max-request-bytes``: 413), wrong types (400), a wrong key (401) and bodies that are not JSON
(400; sent with httpx, since the openai client always sends valid JSON). Every response must have
the status its kind expects, none may be 5xx or a broken connection, and the server's RSS at the
end may exceed its RSS after the warm-up by less than 10%. p50/p99 latencies of the valid requests
are printed and written, with the counts and RSS figures, to ``soak.json`` in the test's tmp dir.

Slow tier: ``make test-slow`` (``pytest -m slow``). Figures measured on the dev VM: docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from server_process import start_server, stop_server

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")

KEY = "soak-key"
DURATION_S = 120.0
WARMUP_S = 20.0
"""RSS is compared with its value at the end of the warm-up; latencies count requests started after it."""
CONCURRENCY = 32
MAX_RSS_GROWTH_MIB = 64
"""Most the server's resident memory may grow between the end of warm-up and the end of the soak."""
MAX_RSS_MIB = 1024
"""Most resident memory of the server (a tiny model) at any point after warm-up."""
MAX_REQUEST_BYTES = 20_000
MAX_RSS_GROWTH = 0.10
KINDS = ["valid", "stream", "valid", "wrong_types", "unauthenticated", "valid", "stream", "oversized", "bad_json"]
"""The cycle each worker runs through (starting at its own offset): 3/9 valid, 2/9 streamed, 1/9 of each bad kind."""
EXPECTED_STATUS = {
    "valid": 200,
    "stream": 200,
    "oversized": 413,
    "wrong_types": 400,
    "bad_json": 400,
    "unauthenticated": 401,
}
WRONG_TYPES = [{"max_tokens": "ten"}, {"temperature": "hot"}, {"messages": "hello"}, {"messages": [{"role": "user"}]}]


class Driver:
    """Sends one request of a kind and returns its HTTP status (None: no HTTP answer at all)."""

    def __init__(self, url: str):
        self.client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        self.wrong_key = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="not-the-key", max_retries=0, timeout=120)
        self.raw = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    async def send(self, kind: str, number: int) -> int | None:
        messages = [{"role": "user", "content": f"Tell me fact {number}."}]
        try:
            if kind == "valid":
                reply = await self.client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=16, temperature=0.7, seed=number
                )
                assert reply.choices[0].finish_reason in ("stop", "length")
            elif kind == "stream":
                stream = await self.client.chat.completions.create(
                    model="tiny", messages=messages, max_tokens=16, stream=True
                )
                reasons = [choice.finish_reason async for chunk in stream for choice in chunk.choices]
                assert reasons and reasons[-1] in ("stop", "length"), reasons
            elif kind == "oversized":
                huge = [{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 1000)}]
                await self.client.chat.completions.create(model="tiny", messages=huge, max_tokens=4)
            elif kind == "wrong_types":
                body = {"model": "tiny", "messages": messages, **WRONG_TYPES[number % len(WRONG_TYPES)]}
                await self.client.chat.completions.create(**body)
            elif kind == "unauthenticated":
                await self.wrong_key.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
            else:  # bad_json
                response = await self.raw.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [')
                return response.status_code
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code
        except (openai.APIConnectionError, httpx.TransportError):
            return None
        except openai.APIError:  # an error event inside a stream (status 200 already sent): a server error
            return 500

    async def close(self) -> None:
        await self.client.close()
        await self.wrong_key.close()
        await self.raw.aclose()


async def drive(url: str, pid: int) -> dict:
    """Run the workers until the deadline while sampling the server's RSS every second."""
    driver = Driver(url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + DURATION_S
    results: list[tuple[str, int | None, float, float]] = []  # kind, status, started (s from start), latency (s)
    rss: list[tuple[float, int]] = []

    async def worker(index: int) -> None:
        number = index
        while loop.time() < deadline:
            kind = KINDS[number % len(KINDS)]
            began = loop.time()
            status = await driver.send(kind, number)
            results.append((kind, status, began - start, loop.time() - began))
            number += CONCURRENCY

    async def sample() -> None:
        process = psutil.Process(pid)
        while loop.time() < deadline:
            rss.append((loop.time() - start, process.memory_info().rss))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    await sampler
    rss.append((loop.time() - start, psutil.Process(pid).memory_info().rss))
    await driver.close()
    return {"results": results, "rss": rss, "elapsed_s": loop.time() - start}


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def summarize(run: dict, engine: dict) -> dict:
    """Counts by kind and status, 5xx and transport errors, RSS after warm-up / at the end, latency percentiles."""
    results, rss = run["results"], run["rss"]
    before = next(value for t, value in rss if t >= WARMUP_S)
    after = rss[-1][1]
    peak = max(value for t, value in rss if t >= WARMUP_S)
    latency = {}
    for kind in ("valid", "stream"):
        ms = [lat * 1000 for k, status, began, lat in results if k == kind and status == 200 and began >= WARMUP_S]
        latency[kind] = {
            "count": len(ms),
            "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1),
        }
    statuses = Counter(f"{kind} {status}" for kind, status, *_ in results)
    return {
        "duration_s": round(run["elapsed_s"], 1),
        "warmup_s": WARMUP_S,
        "concurrency": CONCURRENCY,
        "sent": len(results),
        "sent_by_kind": dict(Counter(kind for kind, *_ in results)),
        "status_by_kind": dict(sorted(statuses.items())),
        "unexpected_status": sum(1 for kind, status, *_ in results if status != EXPECTED_STATUS[kind]),
        "count_5xx": sum(1 for _, status, *_ in results if status is not None and status >= 500),
        "transport_errors": sum(1 for _, status, *_ in results if status is None),
        "rss_mib": {"after_warmup": _mib(before), "end": _mib(after), "peak_after_warmup": _mib(peak)},
        "rss_growth": round(after / before - 1, 4),
        "latency_after_warmup": latency,
        "engine": engine,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


def test_soak_mixed_traffic_for_two_minutes_at_concurrency_32(tiny_model_dir, tmp_path):
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    args = [str(tiny_model_dir), "--name", "tiny", "--host", "127.0.0.1", "--threads", "1"]
    args += ["--max-request-bytes", str(MAX_REQUEST_BYTES), "--max-tokens-limit", "64"]
    process, url = start_server(args, env, tmp_path / "server.log")
    try:
        run = asyncio.run(drive(url, process.pid))
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 200 and process.poll() is None, "the server did not survive the soak"
    finally:
        stop_server(process)
    report = summarize(run, health.json()["engine"])
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsoak report ({tmp_path / 'soak.json'}):\n{json.dumps(report, indent=2)}")

    assert report["count_5xx"] == 0, report["status_by_kind"]
    assert report["transport_errors"] == 0, report["status_by_kind"]
    assert report["unexpected_status"] == 0, report["status_by_kind"]
    assert set(report["sent_by_kind"]) == set(EXPECTED_STATUS)
    latency = report["latency_after_warmup"]
    assert latency["valid"]["count"] > 0 and latency["stream"]["count"] > 0
    assert report["rss_growth"] < MAX_RSS_GROWTH, report["rss_mib"]
    mib = report["rss_mib"]
    assert mib["end"] - mib["after_warmup"] < MAX_RSS_GROWTH_MIB, mib  # bounded in MiB, not only in share
    assert mib["peak_after_warmup"] < MAX_RSS_MIB, mib
