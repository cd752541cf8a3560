"""How ``lmforge studio`` is served: uvicorn, the pages (:mod:`lmforge.studio.app`) mounted behind
:class:`StudioGate` (``lmforge serve``'s Host/Origin checks, and a token, on loopback too: any local user and
any page of another local port could otherwise read and write files and start runs through it)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from lmforge.errors import ConfigError, Problem

if TYPE_CHECKING:
    from lmforge.studio.settings import StudioSettings

TOKEN_ENV = "LMFORGE_STUDIO_TOKEN"
COOKIE = "lmforge_studio_token"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class StudioGate:
    """ASGI middleware: the Host/Origin checks of ``lmforge serve``, then the studio's token.

    The token is accepted as ``Authorization: Bearer TOKEN``, or once as ``?token=TOKEN`` in the address,
    answered with a session cookie (HttpOnly, SameSite=Strict, Secure under TLS) and a redirect to the address
    without the token, so it stays in neither the browser's history nor its cookie jar: the cookie is a random
    session id, not the token. Other requests get 401. Comparisons are on bytes in constant time, so a token
    of any characters is refused, never an error.
    """

    MAX_SESSIONS = 1000
    """Sessions kept (the oldest forgotten first): one per opening of the address with the token."""

    def __init__(self, app: Any, token: str | None, policy: Any, secure: bool = False):
        self.app = app
        self.token = token.encode("utf-8") if token is not None else None
        self.policy = policy
        self.secure = secure
        self.sessions: dict[bytes, None] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from lmforge.serve.middleware import request_problem

        problem = request_problem(self.policy, scope)
        if problem is not None:
            await _plain_response(send, scope, 403, problem[0])
            return
        if self.token is None or self._signed_in(scope):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        offered = dict(query).get("token", "")
        if offered and self._is_token(offered) and scope["type"] == "http":
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("path", "/") + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self._new_session()}; Path=/; HttpOnly; SameSite=Strict"
            cookie += "; Secure" if self.secure else ""
            headers = [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode())]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await _plain_response(
            send, scope, 401, "the studio needs its token: open the address printed when it started (?token=...)"
        )

    def _is_token(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode("utf-8"), self.token)

    def _signed_in(self, scope: dict[str, Any]) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and self._is_token(bearer[7:]):
            return True
        try:
            cookies = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            return False
        session = cookies[COOKIE].value if COOKIE in cookies else ""
        return bool(session) and _digest(session) in self.sessions

    def _new_session(self) -> str:
        session = secrets.token_urlsafe(32)
        self.sessions[_digest(session)] = None
        while len(self.sessions) > self.MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        return session


def _digest(session: str) -> bytes:
    """What the gate keeps of a session id: its hash (looked up, never compared character by character)."""
    return hashlib.sha256(session.encode("utf-8")).digest()


async def _plain_response(send: Any, scope: dict[str, Any], status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def studio_token(host: str, no_token: bool = False) -> str | None:
    """The token the studio requires: ``$LMFORGE_STUDIO_TOKEN``, else a random one made now (None with
    ``no_token``, which is refused beyond loopback)."""
    if no_token:
        if host not in LOOPBACK:
            raise ConfigError(
                "lmforge studio",
                [
                    Problem(
                        "--no-token",
                        f"binding {host!r} opens the studio (which starts runs and reads your files) beyond this "
                        "machine; it always needs a token there: drop --no-token, or bind 127.0.0.1",
                    )
                ],
            )
        return None
    return os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)


def build_app(settings: StudioSettings, token: str | None) -> Any:
    """The ASGI app: the studio's Blocks mounted at ``/`` behind :class:`StudioGate` with ``token``."""
    import gradio as gr
    from fastapi import FastAPI

    from lmforge.serve.middleware import AccessPolicy
    from lmforge.studio.app import build_blocks

    policy = AccessPolicy.build(
        settings.host, settings.host in LOOPBACK, settings.allowed_hosts or [], settings.allowed_origins or []
    )
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app = gr.mount_gradio_app(  # show_error: an unexpected failure shows its message on the page, not nothing
        FastAPI(), build_blocks(settings), path="/", theme=theme, footer_links=[], show_error=True
    )
    app.add_middleware(StudioGate, token=token, policy=policy, secure=settings.ssl_certfile is not None)
    return app


def serve_studio(settings: StudioSettings) -> None:
    """Serve the studio until interrupted; prints the address to open (with the token, as Jupyter does,
    unless the token came from ``$LMFORGE_STUDIO_TOKEN``: the user has it, and it stays out of logs)."""
    import uvicorn

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    token = studio_token(settings.host, settings.no_token)
    app = build_app(settings, token)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    scheme = "https" if settings.ssl_certfile else "http"
    if token is None:
        query = "  (no token: --no-token)"
    elif os.environ.get(TOKEN_ENV):
        query = "?token=$LMFORGE_STUDIO_TOKEN"
    else:
        query = f"?token={token}"
    print(f"studio: runs in {Path(settings.runs_dir).resolve()}", flush=True)
    print(f"studio: open {scheme}://{shown}:{settings.port}/{query}", flush=True)
    tls = {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile} if settings.ssl_certfile else {}
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False, **tls)
