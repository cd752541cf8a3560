"""How ``lmforge serve`` listens and what it accepts: :class:`ServeSettings`, which checks itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.errors import Problem, refuse

RAG_MODES = (None, "bm25", "dense", "hybrid")
"""Retrieval modes a request or the server may name (None: the served run's own)."""


POSITIVE = (
    "max_batch_size", "max_tokens_limit", "default_max_tokens", "max_request_bytes", "max_queue",
    "max_upload_bytes", "max_uncompressed_bytes", "max_upload_pages",
)  # fmt: skip
"""Settings that must be above zero."""


def rag_mode_problems(option: str, mode: str | None) -> list[Problem]:
    """The problem with a retrieval mode given as ``option``, if it is not one (unset is fine)."""
    return [] if mode in RAG_MODES else [Problem(option, f"got {mode!r}; expected bm25, dense or hybrid")]


def port_problems(port: int) -> list[Problem]:
    """The problem with a TCP port, if it is not one."""
    return [] if 0 <= port <= 65535 else [Problem("--port", f"got {port}; expected 0 to 65535")]


@dataclass
class ServeSettings:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "LMFORGE_API_KEY"
    """Environment variable that holds the API key (required when binding beyond 127.0.0.1)."""
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    """How long the engine waits for more requests before starting a batch."""
    max_tokens_limit: int = 2048
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 512
    """``max_tokens`` of requests that do not set it (capped by the context window)."""
    max_request_bytes: int = 1_000_000
    max_upload_bytes: int = 20_000_000
    """Largest uploaded document for ``/v1/extract`` (a seq2seq run)."""
    max_uncompressed_bytes: int = 100_000_000
    """Largest expanded size of an uploaded DOCX (zip bombs are refused before they expand)."""
    max_upload_pages: int = 500
    """Most pages of an uploaded PDF."""
    read_timeout_s: float = 30.0
    """Longest time reading one uploaded document may take (the reading process is killed then)."""
    max_queue: int = 256
    """Most requests (chat) or documents (extraction) waiting for the model; more get 429."""
    dtype: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32`` or ``bf16``."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    rag_default: bool = False
    """Retrieve for requests that do not say ``rag``."""
    rag_top_k: int | None = None
    """Passages per request (None: the served run's ``index.top_k``, as in its evaluation; else 4)."""
    rag_mode: str | None = None
    """``bm25``, ``dense`` or ``hybrid`` (None: the served run's ``index.mode``; else the retriever's default)."""
    rag_route: bool = True
    """Give no passages to a question whose relevance (cosine to the nearest chunk) is below the served
    run's routing threshold (``lmforge.rag.route``); such a reply has empty ``citations``."""
    rag_route_threshold: float | None = None
    """The threshold (None: the served run's index's, when it calibrated one; without one, every
    ``rag`` request retrieves)."""
    allowed_hosts: list[str] = field(default_factory=list)
    """More ``Host`` header values to accept (``name`` or ``name:port``; ``*``: any), see :class:`AccessPolicy`."""
    allowed_origins: list[str] = field(default_factory=list)
    """Web origins besides loopback ones that may call the server (``scheme://host[:port]``; ``*``: any)."""

    def __post_init__(self) -> None:
        problems = rag_mode_problems("--rag-mode", self.rag_mode)
        if self.dtype not in ("auto", "fp32", "bf16"):
            problems.append(Problem("--dtype", f"got {self.dtype!r}; expected auto, fp32 or bf16"))
        problems += port_problems(self.port) + [
            Problem(f"--{name.replace('_', '-')}", f"got {getattr(self, name)}; expected a positive number")
            for name in POSITIVE
            if getattr(self, name) <= 0
        ]
        refuse("lmforge serve", problems)


__all__ = ["RAG_MODES", "ServeSettings", "port_problems", "rag_mode_problems"]
