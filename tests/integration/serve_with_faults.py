"""`lmforge serve` with test-only faults: the production CLI and app, plus faults installed around them.

Run as ``python serve_with_faults.py FAULTS_JSON SERVE_ARGS...`` (``server_process.start_server(...,
faults=...)`` does). The production server has no fault switch: this script swaps
``lmforge.serve.server.build_app`` for a version that builds the real app and then installs the
faults, and runs ``lmforge serve SERVE_ARGS``. FAULTS_JSON is an object:

* ``fail_first`` N / ``fail_every`` N / ``status`` (default 429): answer the first N generation
  requests (and every Nth after) with that status and an OpenAI-style error, before the app sees them;
* ``delay_ms``: wait that long before passing each generation request on;
* ``replies``: ``[[substring, text], ...]``: a generation whose prompt (after the chat template and
  any retrieved passages) contains the substring is answered ``text`` instead of by the model,
  ``{n}`` replaced by a running number (tests use it to get valid JSON from a tiny random model);
* ``crashes``: ``[[substring, "handler" | "engine", message], ...]``: a prompt containing the
  substring raises ``RuntimeError(message)`` in the request handler, or in the engine thread for
  its whole batch (to test that 500s never show exception text).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any

GENERATION_PATHS = {"/v1/chat/completions", "/v1/completions"}


class FailAndDelay:
    """ASGI middleware: ``fail_first`` / ``fail_every`` / ``delay_ms`` on generation requests."""

    def __init__(self, app: Any, faults: dict[str, Any]):
        self.app = app
        self.faults = faults
        self.count = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in GENERATION_PATHS:
            from starlette.responses import JSONResponse

            from lmforge.serve.protocol import APIError

            self.count += 1
            number = self.count
            if self.faults.get("delay_ms"):
                await asyncio.sleep(float(self.faults["delay_ms"]) / 1000)
            every = int(self.faults.get("fail_every", 0))
            if number <= int(self.faults.get("fail_first", 0)) or (every and number % every == 0):
                status = int(self.faults.get("status", 429))
                error = APIError(status, f"injected fault #{number}", type_="rate_limit_error")
                headers = {"Retry-After": "1"} if status == 429 else None
                await JSONResponse(error.body(), status_code=status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def script_engine(engine: Any, faults: dict[str, Any]) -> None:
    """Wrap the engine's ``submit`` (scripted replies, handler crashes) and ``generate_batch`` (engine crashes)."""
    from lmforge.serve.engine import Event

    replies = faults.get("replies", [])
    crashes = faults.get("crashes", [])
    numbers = itertools.count(1)
    submit, generate_batch = engine.submit, engine.generate_batch

    def prompt_of(job: Any) -> str:
        return job.tokenizer.decode(job.prompt_ids)

    def scripted_submit(job: Any) -> None:
        prompt = prompt_of(job)
        for needle, where, message in crashes:
            if where == "handler" and needle in prompt:
                raise RuntimeError(message)
        for needle, reply in replies:
            if needle in prompt:
                text = str(reply).replace("{n}", str(next(numbers)))
                tokens = len(job.tokenizer(text, add_special_tokens=False)["input_ids"])
                job.emit(Event("delta", text=text))
                job.emit(
                    Event("done", finish_reason="stop", prompt_tokens=len(job.prompt_ids), completion_tokens=tokens)
                )
                return
        submit(job)

    def crashing_generate_batch(requests: list[Any]) -> None:
        prompts = [prompt_of(job) for job in requests]
        for needle, where, message in crashes:
            if where == "engine" and any(needle in prompt for prompt in prompts):
                raise RuntimeError(message)
        generate_batch(requests)

    engine.submit = scripted_submit
    engine.generate_batch = crashing_generate_batch


def install_faults(app: Any, faults: dict[str, Any]) -> None:
    """Put the faults into an app made by ``build_app``: innermost middleware, and the engine's methods."""
    from starlette.middleware import Middleware

    app.user_middleware.append(Middleware(FailAndDelay, faults=faults))  # innermost: behind the Host/Origin checks
    script_engine(app.state.engine, faults)


def main() -> None:
    import lmforge.serve.server as server
    from lmforge.cli import app as cli

    faults = json.loads(sys.argv[1])
    build_app = server.build_app

    def build_app_with_faults(*args: Any, **kwargs: Any) -> Any:
        app = build_app(*args, **kwargs)
        install_faults(app, faults)
        return app

    server.build_app = build_app_with_faults
    print(f"serve: WARNING: test faults are on: {json.dumps(faults)}", flush=True)
    cli(args=["serve", *sys.argv[2:]], prog_name="lmforge")


if __name__ == "__main__":
    main()
