"""How ``lmforge studio`` is served: uvicorn, the pages (:mod:`lmforge.studio.app`) mounted behind
:class:`StudioGate` (``lmforge serve``'s Host/Origin checks, and a token beyond loopback)."""

from __future__ import annotations

import hmac
import os
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from lmforge.errors import ConfigError, Problem

if TYPE_CHECKING:
    from lmforge.studio.app import StudioSettings

TOKEN_ENV = "LMFORGE_STUDIO_TOKEN"
COOKIE = "lmforge_studio_token"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class StudioGate:
    """ASGI middleware: the Host/Origin checks of ``lmforge serve``, and the token when one is set.

    The token is accepted as ``Authorization: Bearer TOKEN``, as the cookie the studio sets, or once as
    ``?token=TOKEN`` in the address (answered with that cookie and a redirect to the address without it,
    so the token does not stay in the browser's history). Other requests get 401.
    """

    def __init__(self, app: Any, token: str | None, policy: Any):
        self.app = app
        self.token = token
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.policy.host_problem(headers.get("host", ""))
        if problem is None and "origin" in headers:
            problem = self.policy.origin_problem(headers["origin"])
        if problem is not None:
            await _plain_response(send, scope, 403, problem)
            return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        cookies = SimpleCookie(headers.get("cookie", ""))
        bearer = headers.get("authorization", "")
        offered = [
            bearer[7:] if bearer.lower().startswith("bearer ") else "",
            cookies[COOKIE].value if COOKIE in cookies else "",
        ]
        if any(offered_value and hmac.compare_digest(offered_value, self.token) for offered_value in offered):
            await self.app(scope, receive, send)
            return
        if query.get("token") and hmac.compare_digest(query["token"], self.token) and scope["type"] == "http":
            rest = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != "token"])
            location = scope.get("path", "/") + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await _plain_response(
            send, scope, 401, f"the studio needs its token: open the address with ?token=... (${TOKEN_ENV})"
        )


async def _plain_response(send: Any, scope: dict[str, Any], status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def studio_token(host: str) -> str | None:
    """The token the studio requires: ``$LMFORGE_STUDIO_TOKEN``; refuses to bind beyond loopback without one."""
    token = os.environ.get(TOKEN_ENV) or None
    if host not in LOOPBACK and token is None:
        raise ConfigError(
            "lmforge studio",
            [
                Problem(
                    "--host",
                    f"binding {host!r} opens the studio (which starts runs and reads your files) beyond this "
                    f"machine, which needs a token; set ${TOKEN_ENV} and open the address with ?token=..., "
                    "or bind 127.0.0.1",
                )
            ],
        )
    return token


def build_app(settings: StudioSettings) -> Any:
    """The ASGI app: the studio's Blocks mounted at ``/`` behind :class:`StudioGate`."""
    import gradio as gr
    from fastapi import FastAPI

    from lmforge.serve.middleware import AccessPolicy
    from lmforge.studio.app import build_blocks

    token = studio_token(settings.host)
    policy = AccessPolicy.build(
        settings.host, settings.host in LOOPBACK, settings.allowed_hosts or [], settings.allowed_origins or []
    )
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app = gr.mount_gradio_app(  # show_error: an unexpected failure shows its message on the page, not nothing
        FastAPI(), build_blocks(settings), path="/", theme=theme, footer_links=[], show_error=True
    )
    app.add_middleware(StudioGate, token=token, policy=policy)
    return app


def serve_studio(settings: StudioSettings) -> None:
    """Serve the studio until interrupted."""
    import uvicorn

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(settings)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    token = " (open it with ?token=$LMFORGE_STUDIO_TOKEN)" if os.environ.get(TOKEN_ENV) else ""
    print(f"studio: runs in {Path(settings.runs_dir).resolve()}", flush=True)
    print(f"studio: listening on http://{shown}:{settings.port}/{token}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
