"""What stands between the network and ``lmforge serve``'s API: request ids, opaque 500s, Host and Origin checks.

* :class:`RequestIds` gives every request an id, sent back in the ``x-request-id`` header. An
  exception nobody expected is logged here with that id and its traceback, and the client gets
  ``{"error": {"message": "internal error (request id ...)", "type": "server_error"}}``: exception
  text can hold paths, prompts or other users' data, so it stays in the server's log.
* :class:`NetworkGuard` refuses (403, OpenAI error shape) a request whose ``Host`` header is not a
  name the server answers to, and a request whose ``Origin`` header is neither the server's own
  origin (the scheme, host and port the request was sent to: the page it serves) nor one that was
  allowed. A keyless server on 127.0.0.1 is otherwise open to any web page the user visits: a page
  can POST to it across sites, and a page on a domain that the attacker re-points at 127.0.0.1 (DNS
  rebinding) can even read the answers. A page served from *another port* of the same machine is
  another origin too, and is refused like any other site. Browsers always send ``Host`` and send
  ``Origin`` on cross-origin requests, and a page cannot forge either.

Plain ASGI middleware (not ``BaseHTTPMiddleware``), so streamed responses pass through untouched.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.errors import ConfigError, Problem
from lmforge.serve.protocol import APIError

log = logging.getLogger("lmforge.serve")

REQUEST_ID_HEADER = "x-request-id"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
"""Bind addresses that are not a name anyone puts in a Host header."""
DEFAULT_PORTS = {"http": "80", "https": "443"}

# A Host header value: a name or IPv4 address, or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:/\s@]+))(?::(?P<port>\d{1,5}))?$")
_ORIGIN = re.compile(r"^(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[^\[\]:/\s@]+)(?::(?P<port>\d{1,5}))?/?$")


def internal_error(request_id: str) -> APIError:
    """The 500 a client gets for a failure it did not cause: no exception text, only the id to look up in the log."""
    return APIError(500, f"internal error (request id {request_id})", type_="server_error")


def new_request_id() -> str:
    """``req_`` and 24 random hex digits: unguessable, and short enough to read out of a log."""
    return f"req_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- request ids and 500s


class RequestIds:
    """Give every HTTP request an id (``request.state.request_id``, the ``x-request-id`` response header) and turn
    an unexpected exception into a logged, opaque 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        response = {"started": False, "finished": False, "stream": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                response["started"] = True
                response["stream"] = headers.get("content-type", "").startswith("text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["finished"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:  # the client left mid-request: nobody to answer, nothing went wrong here
            log.info("request %s (%s %s): the client disconnected", request_id, scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            error = internal_error(request_id).body()
            if not response["started"]:
                await JSONResponse(error, status_code=500)(scope, receive, send_with_id)
            elif not response["finished"]:
                # The status line is gone already: end a stream with an error event, anything else as it stands.
                tail = f"data: {json.dumps(error)}\n\n".encode() if response["stream"] else b""
                await send_with_id({"type": "http.response.body", "body": tail, "more_body": False})


# ---------------------------------------------------------------- Host and Origin


@dataclass(frozen=True)
class AccessPolicy:
    """Which ``Host`` and ``Origin`` header values a server accepts (None: any)."""

    hosts: frozenset[tuple[str, str | None]] | None
    """(host, port) pairs; a None port matches any port (and none)."""
    origins: frozenset[str] | None
    """Normalized origins accepted besides the loopback ones."""

    @classmethod
    def build(
        cls, bind_host: str, loopback: bool, allowed_hosts: list[str], allowed_origins: list[str]
    ) -> AccessPolicy:
        """The policy of a server bound to ``bind_host``.

        On a loopback address the Host check is on: localhost, 127.0.0.1, [::1] and the bind address,
        with any port, plus ``allowed_hosts``. Beyond loopback the server has an API key (``check_binding``
        insists) and clients use names the server cannot know, so any Host is accepted unless
        ``allowed_hosts`` is given. The Origin check is always on. ``*`` in either list accepts anything.

        Raises:
            ConfigError: an entry is not a host[:port] or a scheme://host[:port] origin (every bad entry listed).
        """
        problems: list[Problem] = []
        hosts = None
        if "*" not in allowed_hosts and (loopback or allowed_hosts):
            hosts = {(name, None) for name in LOOPBACK_NAMES}
            if bind_host not in WILDCARD_BINDS:
                hosts.add((bind_host.strip("[]").lower(), None))
            hosts |= _parse_entries(
                allowed_hosts, _host_entry, "--allowed-host", "host[:port], like lan-box:8000", problems
            )
        origins = None
        if "*" not in allowed_origins:
            expected = "an origin scheme://host[:port], like https://app.example.com"
            origins = _parse_entries(allowed_origins, normalize_origin, "--allowed-origin", expected, problems)
        if problems:
            raise ConfigError("lmforge serve", problems)
        return cls(frozenset(hosts) if hosts is not None else None, frozenset(origins) if origins is not None else None)

    def host_problem(self, value: str) -> str | None:
        """Why a ``Host`` header value is refused, or None when it is accepted."""
        if self.hosts is None:
            return None
        parsed = split_host(value)
        if parsed is not None and ((parsed[0], None) in self.hosts or parsed in self.hosts):
            return None
        return (
            f"the Host header {value[:100]!r} is not a name this server answers to (localhost, 127.0.0.1, [::1], "
            "its bind address and the names given with --allowed-host); requests under other names are refused "
            "so that a web page cannot reach the server through DNS rebinding. To use this name, start the "
            "server with --allowed-host NAME"
        )

    def origin_problem(self, value: str, host: str | None = None) -> str | None:
        """Why an ``Origin`` header value is refused, or None when it is accepted: the request's own origin
        (``host``: its Host header) or an allowed one. Loopback origins on other ports are other sites."""
        normalized = normalize_origin(value)
        if self.origins is None or (
            normalized is not None and (normalized in self.origins or same_origin(normalized, host))
        ):
            return None
        return (
            f"requests from the web origin {value[:100]!r} are refused: only pages this server serves itself (same "
            "scheme, host and port) and the origins given with --allowed-origin may call it -- a page on another "
            "port of this machine is another site; to allow this one, start the server with --allowed-origin ORIGIN"
        )


def split_host(value: str) -> tuple[str, str | None] | None:
    """``(host, port)`` of a Host header value, lowercased, IPv6 without brackets; None when malformed."""
    match = _HOST.match(value.strip().lower())
    if match is None:
        return None
    host = match["v6"] if match["v6"] is not None else match["name"].rstrip(".")
    return host, match["port"]


def _host_entry(entry: str) -> tuple[str, str | None] | None:
    """An ``--allowed-host`` entry as (host, port); a bare IPv6 address (``fe80::1``) needs no brackets here."""
    return split_host(f"[{entry}]" if entry.count(":") > 1 and "[" not in entry else entry)


def _parse_entries(entries: list[str], parse: Any, option: str, expected: str, problems: list[Problem]) -> set[Any]:
    parsed = set()
    for entry in entries:
        value = parse(entry)
        if value is None:
            problems.append(Problem(option, f"{entry!r} is not {expected}"))
        else:
            parsed.add(value)
    return parsed


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]``, lowercased, without a default port or trailing slash; ``null`` stays ``null``;
    None when ``value`` is not an origin."""
    value = value.strip().lower()
    if value == "null":
        return value
    match = _ORIGIN.match(value)
    if match is None:
        return None
    port = match["port"]
    shown_port = f":{port}" if port and DEFAULT_PORTS[match["scheme"]] != port else ""
    return f"{match['scheme']}://{match['host']}{shown_port}"


def same_origin(normalized: str, host: str | None) -> bool:
    """Whether a normalized origin names the host and port of the ``Host`` header the request came with."""
    match = _ORIGIN.match(normalized)
    parsed = split_host(host) if host else None
    if match is None or parsed is None:
        return False
    default = DEFAULT_PORTS[match["scheme"]]
    return match["host"].strip("[]") == parsed[0] and (match["port"] or default) == (parsed[1] or default)


class NetworkGuard:
    """Refuse (403) HTTP requests whose ``Host`` or ``Origin`` headers the :class:`AccessPolicy` does not accept."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                message, code = problem
                error = APIError(403, message, code=code)
                await JSONResponse(error.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[str, str] | None:
        return request_problem(self.policy, scope)


def request_problem(policy: AccessPolicy, scope: Scope) -> tuple[str, str] | None:
    """(message, code) when the request's ``Host`` or ``Origin`` header is refused by ``policy``, else None."""
    headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host = headers.get(b"host", "")
    if (message := policy.host_problem(host)) is not None:
        return message, "host_not_allowed"
    if b"origin" in headers and (message := policy.origin_problem(headers[b"origin"], host)) is not None:
        return message, "origin_not_allowed"
    return None


def install_network_guard(app: Any, policy: AccessPolicy) -> None:
    """Add the Host/Origin checks to ``app``, and CORS headers for the origins they accept.

    CORS is what lets a browser app at an allowed origin read the replies (and pass the preflight
    that a JSON POST needs); origins the guard refuses never reach it.
    """
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if policy.origins is None else sorted(policy.origins),
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type"],
        expose_headers=[REQUEST_ID_HEADER],
    )
    app.add_middleware(NetworkGuard, policy=policy)  # added last: runs first, before CORS and the API
