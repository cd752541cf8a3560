"""lmforge studio end to end, in headless Chromium driven by Playwright (the system's Chromium, no download).

One studio process, one tiny model: a recipe is built in the form (a bad value shows lmforge
validate's message), the run is started from the page, the page is reloaded and a second tab opened
while it trains (both see the same run, the loss curve gets points), then the comparison is filtered,
both models answer a chat message (streamed), and the run is merged on the export page. A screenshot
of each page is written to ``$LMFORGE_STUDIO_SHOTS`` (default: the test's folder); the README's come
from here. CI installs chromium and sets LMFORGE_REQUIRE_CHROMIUM=1: there a missing browser fails.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from browser import chromium
from conftest import qa_rows, write_jsonl
from server_process import free_port

from lmforge.errors import StageError
from lmforge.studio.pages import EMPTY_REPLY, citation_lines

pytestmark = pytest.mark.integration
playwright = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")

FACTS = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(12)]
SOURCES = "- {path: qa/train.jsonl, split: train}\n- {path: qa/test.jsonl, split: test}"


TOKEN = "t0ken-for-tests"


def start_studio(runs: Path, log: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A studio process; its token is ``$LMFORGE_STUDIO_TOKEN`` of ``env`` (default: :data:`TOKEN`)."""
    port = free_port()
    command = [sys.executable, "-m", "lmforge", "studio", str(runs), "--port", str(port), *args]
    env = env or {**os.environ, "LMFORGE_STUDIO_TOKEN": TOKEN}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    token = env.get("LMFORGE_STUDIO_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the studio exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"the studio did not answer in 120 s:\n{log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def fill(page, elem_id: str, value: str) -> None:
    """Type into a studio text or number field, key by key as a person does (Gradio renders a textarea or an
    input inside the block; its "input" event follows key presses)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill("")
    box.press_sequentially(value)
    box.blur()


def choose(page, elem_id: str, *options: str) -> None:
    """Pick options of a studio dropdown."""
    box = page.locator(f"#{elem_id} input").first
    for option in options:
        box.click()
        page.locator(f"#{elem_id} li[role=option][aria-label='{option}']").click()
    box.blur()


def open_section(page, name: str) -> None:
    """Unfold a section of the recipe form (sections other than run, model and data start folded)."""
    page.locator(f"#section-{name} > button.label-wrap").click()


def text_of(page, elem_id: str) -> str:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    return box.input_value()


def page_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(FACTS))
    write_jsonl(
        tmp_path / "qa" / "test.jsonl", qa_rows([(f"Tell me fact {i}.", a) for i, (_, a) in enumerate(FACTS[:4])])
    )
    return tmp_path


def test_the_whole_job_in_the_browser(workspace: Path, tiny_model_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("LMFORGE_STUDIO_SHOTS") or workspace / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    runs = workspace / "runs"
    # Bound beyond loopback, driven through the page's buttons (same-origin POSTs) after opening it with the token.
    log = workspace / "studio.log"
    studio, url = start_studio(runs, log, "--host", "0.0.0.0", "--allow-dir", str(workspace))
    recipe = workspace / "tiny.yaml"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(f"{url}?token={TOKEN}")
            expect(page.locator("#recipe-validation")).to_be_visible(timeout=60_000)
            assert "token" not in page.url  # redirected to the address without it; the session cookie is set

            try:
                # The recipe, built in the form.
                fill(page, "recipe-path", str(recipe))
                fill(page, "field-name", "tiny")
                choose(page, "field-stages", "data", "sft", "eval")
                fill(page, "field-model-ref", str(tiny_model_dir))
                fill(page, "field-data-sources", SOURCES)
                open_section(page, "sft")
                fill(page, "field-sft-epochs", "3")
                fill(page, "field-sft-batch_size", "4")
                fill(page, "field-sft-max_length", "128")
                fill(page, "field-sft-logging_steps", "1")
                choose(page, "field-sft-precision", "fp32")
                open_section(page, "eval")
                fill(page, "field-eval-sets", "[test]")
                fill(page, "field-eval-max_new_tokens", "8")
                fill(page, "field-eval-bootstrap", "200")
                fill(page, "field-sft-lr", "-1")
                validation = page.locator("#recipe-validation textarea")
                expect(validation).to_have_value(
                    re.compile(r"sft\.lr: got -1(\.0)?; expected greater than 0"), timeout=20_000
                )
                fill(page, "field-sft-lr", "0.005")
                expect(validation).to_have_value(
                    re.compile(r"is valid: run 'tiny', stages data, sft, eval"), timeout=20_000
                )
                page.screenshot(path=str(shots / "recipe.png"))
                page.locator("#recipe-start").click()
                expect(page.locator("#recipe-status")).to_contain_text("started run", timeout=30_000)
                assert "sft:" in recipe.read_text() and "lr: 0.005" in recipe.read_text()

                # A reload, and a second tab: both see the run, and its loss curve gets points.
                page.reload()
                expect(page.locator("#recipe-validation")).to_be_visible(timeout=60_000)
                other = context.new_page()
                other.goto(url)
                for tab in (page, other):
                    page_tab(tab, "Runs")
                    expect(tab.locator("#run-select input")).to_have_value("tiny", timeout=30_000)
                expect(page.locator("#run-points")).to_contain_text(
                    re.compile(r"sft train: [1-9]\d* points"), timeout=180_000
                )
                expect(other.locator("#run-points")).to_contain_text(
                    re.compile(r"sft train: [1-9]\d* points"), timeout=30_000
                )
                page.screenshot(path=str(shots / "runs.png"))
                expect(page.locator("#run-state textarea")).to_have_value("finished", timeout=300_000)
                expect(other.locator("#run-state textarea")).to_have_value("finished", timeout=30_000)
                expect(page.locator("#run-stages")).to_contain_text("done")
                other.close()

                # The comparison: scores with intervals, the question table filtered.
                page_tab(page, "Compare")
                choose(page, "compare-run", "tiny")
                expect(page.locator("#compare-scores")).to_contain_text("tuned", timeout=30_000)
                table = page.locator("#question-table")
                for i in range(4):
                    expect(table).to_contain_text(f"Tell me fact {i}.", timeout=30_000)
                fill(page, "question-filter", "fact 2")
                expect(table).not_to_contain_text("Tell me fact 1.", timeout=30_000)
                expect(table).to_contain_text("Tell me fact 2.")
                page.screenshot(path=str(shots / "compare.png"))

                # Chat: both models answer, streamed.
                page_tab(page, "Chat")
                choose(page, "chat-run", "tiny")
                fill(page, "chat-message", "What is fact number 3?")
                page.locator("#chat-send").click()
                for side in ("base", "tuned"):  # an empty reply is shown as such, so both bubbles fill
                    expect(page.locator(f"#chat-{side} [data-testid='bot']").last).not_to_be_empty(timeout=120_000)
                expect(page.locator("#chat-tuned [data-testid='bot']").last).not_to_have_text(EMPTY_REPLY)
                page.screenshot(path=str(shots / "chat.png"))

                # Data: what the data stage makes of the sources.
                page_tab(page, "Data")
                fill(page, "data-target", str(recipe))
                page.locator("#data-inspect").click()
                expect(page.locator("#data-files")).to_contain_text("train.jsonl", timeout=60_000)
                page.screenshot(path=str(shots / "data.png"))

                # Export: merge the adapter, with the parity checks.
                page_tab(page, "Export")
                choose(page, "export-run", "tiny")
                page.locator("#export-merge").click()
                expect(page.locator("#export-log textarea")).to_have_value(
                    re.compile("export finished"), timeout=180_000
                )
                expect(page.locator("#export-checks")).to_contain_text("true", timeout=10_000)
                page.screenshot(path=str(shots / "export.png"))
            except Exception:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)  # what the page showed
                raise
            browser.close()
    finally:
        stop(studio)
    assert (runs / "tiny" / "export" / "hf").is_dir()


def test_the_chat_page_streams_both_models_on_the_serve_engine(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The generator behind the chat page yields each model's reply as it grows, token by token."""
    from lmforge.config import load_recipe
    from lmforge.pipeline import run_recipe
    from lmforge.studio.chatting import ChatPair

    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(FACTS))
    recipe = tmp_path / "chat.yaml"
    recipe.write_text(
        f"""
name: chat
run_dir: {tmp_path / "runs"}
stages: [data, sft]
model: {{ref: {tiny_model_dir}}}
data: {{sources: [{{path: qa/train.jsonl, split: train}}]}}
sft: {{epochs: 2, lr: 5.0e-3, batch_size: 4, max_length: 128, precision: fp32}}
""",
        encoding="utf-8",
    )
    run_recipe(load_recipe(recipe))
    pair = ChatPair(tmp_path / "runs" / "chat", dtype="fp32")

    class Passages:  # the run has no index: a stand-in retriever, to follow the passages through the chat path
        def search(self, queries: list[str], k: int, mode: str = "hybrid") -> list[list[dict]]:
            found = {"id": "a1", "source": {"path": "law/art-3.md", "heading": "Art. 3"}, "text": "Fact 3 is 21."}
            return [[found] for _ in queries]

    try:
        states = [
            {side: reply.text[side] for side in ("base", "tuned")}
            for reply in pair.stream({}, "What is fact number 3?", rag=False, max_tokens=24)
        ]
        with pytest.raises(StageError, match="no retrieval index"):
            next(pair.stream({}, "What is fact number 3?", rag=True))
        pair.retriever = Passages()
        replies = list(pair.stream({}, "What is fact number 3?", rag=True, max_tokens=4))
    finally:
        pair.close()
    assert replies[-1].citations == [{"index": 1, **Passages().search(["q"], 1)[0][0]}]
    assert "[1] `law/art-3.md` Fact 3 is 21." in citation_lines(replies[-1].citations, None)
    tuned = [state["tuned"] for state in states]
    assert tuned[-1] and len(set(tuned)) > 2  # the tuned reply grew over several updates
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(tuned))
    assert "adapter" in " ".join(pair.labels.values())  # base and tuned: one model, the adapter on and off


def test_the_studio_wants_its_token_on_loopback_too(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "LMFORGE_STUDIO_TOKEN"}
    refused = subprocess.run(
        [sys.executable, "-m", "lmforge", "studio", str(tmp_path / "runs"), "--host", "0.0.0.0", "--no-token",
         "--port", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "--no-token" in refused.stderr
    log = tmp_path / "studio.log"
    port = free_port()
    command = [sys.executable, "-m", "lmforge", "studio", str(tmp_path / "runs"), "--port", str(port)]
    studio = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline, printed = time.monotonic() + 120, None
        while printed is None and time.monotonic() < deadline and studio.poll() is None:
            printed = re.search(r"open (http://\S+)\?token=(\S+)", log.read_text())
            time.sleep(0.3)
        assert printed, log.read_text()
        url, token = printed.group(1), printed.group(2)
        while time.monotonic() < deadline:
            try:
                first = httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert first.status_code == 401  # loopback, no token: refused
        assert httpx.get(url, params={"token": "wrong"}).status_code == 401
        assert httpx.get(url, params={"token": "\u00e9"}).status_code == 401  # non-ASCII: refused, not a 500
        with httpx.Client() as browser:  # keeps the cookie, as a browser does
            opened = browser.get(url, params={"token": token})
            assert opened.status_code == 303 and "token" not in opened.headers["location"]
            assert token not in opened.headers["set-cookie"]
            page = browser.get(url)
            assert page.status_code == 200 and "lmforge studio" in page.text
            assert browser.get(f"{url}gradio_api/info").status_code == 200
            # a page on another port of this machine posting to the studio, with the user's cookie: refused
            other = browser.post(f"{url}gradio_api/queue/join", json={}, headers={"Origin": "http://127.0.0.1:1"})
            assert other.status_code == 403
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        stop(studio)
