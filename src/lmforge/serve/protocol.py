"""Request bodies of the OpenAI-compatible API, and OpenAI-style error bodies.

Unknown parameters are refused (as the OpenAI API does), and so are known ones whose value the
server cannot honour (``n`` > 1, non-zero penalties, JSON mode): a client then learns at once
that it did not get what it asked for, instead of getting something else silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """An error answered to the client with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def busy(limit: int, what: str) -> APIError:
    """The 429 of a server whose queue is full."""
    return APIError(
        429,
        f"the server is busy: {limit} {what} are already waiting (its --max-queue); retry in a moment",
        type_="rate_limit_error",
        code="server_busy",
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(_Request):
    """One part of a message's content; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One turn of a conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Settings shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"only n=1 is supported, got {value}; send separate requests (they are batched)")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError(f"penalties are not supported, got {value}; leave them at 0")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionRequest(_Sampling):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    rag: bool | None = None
    """lmforge extension: retrieve passages for the last user turn and cite them (None: server default)."""

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        if value is not None and value.type != "text":
            raise ValueError(
                f"response_format {value.type!r} is not supported by lmforge serve (no constrained decoding); "
                "omit response_format and ask for JSON in the prompt"
            )
        return value


class CompletionRequest(_Sampling):
    """Body of ``POST /v1/completions``."""

    prompt: str | list[str]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"exactly one prompt per request is supported, got {len(value)}")
            return value[0]
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported; the prompt is not repeated in the reply")
        return value


def parse_request(model: type[_Request], payload: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming the parameter."""
    if not isinstance(payload, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        elif first["type"] == "missing":
            message = f"missing required parameter: {param}"
        else:
            received = first.get("input")
            shown = repr(received) if not isinstance(received, (dict, list)) else type(received).__name__
            message = f"invalid value for {param}: {first['msg'].removeprefix('Value error, ')} (got {shown[:80]})"
        raise APIError(400, message, param=param, code="invalid_value") from None
