"""How ``lmforge serve`` listens and what it accepts: :class:`ServeSettings`, which checks itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from lmforge.errors import Problem, refuse
from lmforge.options import Opt, bound_problems

RAG_MODES = (None, "bm25", "dense", "hybrid")
"""Retrieval modes a request or the server may name (None: the served run's own)."""


def rag_mode_problems(option: str, mode: str | None) -> list[Problem]:
    """The problem with a retrieval mode given as ``option``, if it is not one (unset is fine)."""
    return [] if mode in RAG_MODES else [Problem(option, f"got {mode!r}; expected bm25, dense or hybrid")]


ALLOWED_HOST = Opt("Also accept this Host header: NAME or NAME:PORT ('*': any). Repeatable.", flag="allowed-host")
ALLOWED_ORIGIN = Opt(
    "Let this web origin call the server: scheme://host[:port] ('*': any). Repeatable.", flag="allowed-origin"
)
"""The two access options ``serve`` and ``studio`` share (see :class:`lmforge.serve.middleware.AccessPolicy`)."""


@dataclass
class ServeSettings:
    """How the server listens and what it accepts; each field is also an option of ``lmforge serve``."""

    host: Annotated[str, Opt("Address to bind; anything but 127.0.0.1 needs an API key.")] = "127.0.0.1"
    port: Annotated[int, Opt("TCP port.", min=0, max=65535)] = 8000
    api_key_env: Annotated[
        str, Opt("Environment variable holding the API key (required when binding beyond 127.0.0.1).")
    ] = "LMFORGE_API_KEY"
    max_batch_size: Annotated[int, Opt("Requests decoded together.", min=1)] = 16
    batch_wait_ms: Annotated[float, Opt("How long to wait for more requests before a batch starts.", min=0)] = 5.0
    max_tokens_limit: Annotated[int, Opt("Largest max_tokens a request may ask for.", min=1)] = 2048
    default_max_tokens: Annotated[
        int, Opt("max_tokens of requests that do not set it (capped by the context window).", min=1)
    ] = 512
    max_request_bytes: Annotated[int, Opt("Largest request body.", min=1024)] = 1_000_000
    max_upload_bytes: Annotated[int, Opt("Largest uploaded document for /v1/extract (a seq2seq run).", min=1024)] = (
        20_000_000
    )
    max_uncompressed_bytes: Annotated[
        int, Opt("Largest expanded size of an uploaded DOCX (zip bombs are refused before they expand).", min=1024)
    ] = 100_000_000
    max_upload_pages: Annotated[int, Opt("Most pages of an uploaded PDF.", min=1)] = 500
    read_timeout_s: Annotated[
        float, Opt("Longest time reading one uploaded document may take (the reader is killed then).", min=0.1)
    ] = 30.0
    max_queue: Annotated[
        int, Opt("Most requests (chat) or documents (extraction) waiting for the model; more get 429.", min=1)
    ] = 256
    dtype: Annotated[str, Opt("auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")] = "auto"
    threads: Annotated[int | None, Opt("torch CPU threads (default: torch's).", min=1)] = None
    rag_default: Annotated[bool, Opt("With --rag: retrieve for requests that do not say rag.")] = False
    rag_top_k: Annotated[
        int | None, Opt("With --rag: passages per request (default: the run's index.top_k, else 4).", min=1)
    ] = None
    rag_mode: Annotated[str | None, Opt("With --rag: bm25, dense or hybrid (default: the run's index.mode).")] = None
    rag_route: Annotated[
        bool,
        Opt(
            "With --rag: no passages for a question whose relevance (cosine to the nearest chunk) is below the "
            "run's routing threshold; such a reply has empty citations."
        ),
    ] = True
    rag_route_threshold: Annotated[
        float | None, Opt("With --rag: the routing threshold (default: the one the run's index calibrated).")
    ] = None
    allowed_hosts: Annotated[list[str], ALLOWED_HOST] = field(default_factory=list)
    allowed_origins: Annotated[list[str], ALLOWED_ORIGIN] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = rag_mode_problems("--rag-mode", self.rag_mode)
        if self.dtype not in ("auto", "fp32", "bf16"):
            problems.append(Problem("--dtype", f"got {self.dtype!r}; expected auto, fp32 or bf16"))
        refuse("lmforge serve", problems + bound_problems(self))


__all__ = ["ALLOWED_HOST", "ALLOWED_ORIGIN", "RAG_MODES", "ServeSettings", "rag_mode_problems"]
