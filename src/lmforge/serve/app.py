"""What every kind of lmforge server shares: the FastAPI app with its network guard, request ids and the
OpenAI error shape, the API-key check as a dependency, and the JSON body reader with its size limit.
The chat server (:mod:`lmforge.serve.server`) and the extraction server (:mod:`lmforge.serve.extract`)
add their routers to it."""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lmforge.serve.middleware import AccessPolicy, RequestIds, install_network_guard
from lmforge.serve.protocol import APIError


def base_app(
    settings: Any, api_key: str | None, policy: AccessPolicy | None, lifespan: Any
) -> tuple[FastAPI, Any, Any]:
    """What every kind of server shares: the app with the network guard, request ids and the OpenAI error
    shape; the API-key check as a dependency (``Depends(auth)`` on every route but ``/health``); and the
    JSON body reader that enforces ``max_request_bytes``.

    Returns:
        ``(app, auth, read_json_body)``.
    """
    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if policy is not None:
        install_network_guard(app, policy)
    app.add_middleware(RequestIds)  # added last, so outermost: every response carries x-request-id, 403s too

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code)

    async def auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            reason = "no API key given" if not given else "the API key is wrong"
            raise APIError(
                401,
                f"{reason}; send it as 'Authorization: Bearer <key>' (the server reads ${settings.api_key_env})",
                code="invalid_api_key",
            )

    async def read_json_body(request: Request) -> Any:
        body = await read_body(request, settings.max_request_bytes)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None

    return app, auth, read_json_body


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as its declared or received size passes ``limit`` bytes;
    kept on the request, so starlette's form parser reads it from there."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _too_large(len(body), limit)
    request._body = bytes(body)
    return request._body


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"request body of {size} bytes is over the limit of {limit} bytes", code="request_too_large")
