"""How ``lmforge studio`` listens and what it may reach: :class:`StudioSettings`, which checks itself (no Gradio
needed to build it, so the command's options exist without the studio extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from lmforge.errors import Problem, refuse
from lmforge.options import Opt, bound_problems
from lmforge.serve.settings import ALLOWED_HOST, ALLOWED_ORIGIN


@dataclass
class StudioSettings:
    """Each field but ``runs_dir`` (the command's argument) is also an option of ``lmforge studio``."""

    runs_dir: Path
    host: Annotated[str, Opt("Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1"
    port: Annotated[int, Opt("TCP port.", min=0, max=65535)] = 7860
    recipe: Annotated[Path | None, Opt("A recipe to open on the recipe page.")] = None
    allowed_hosts: Annotated[list[str] | None, ALLOWED_HOST] = None
    allowed_origins: Annotated[list[str] | None, ALLOWED_ORIGIN] = None
    no_token: Annotated[
        bool,
        Opt("Serve without a token (loopback only: any local user and any local page can use it).", flag="no-token"),
    ] = False
    allow_dirs: Annotated[
        list[Path] | None, Opt("Let Load, Save and Data use this folder too (repeatable).", flag="allow-dir")
    ] = None
    allow_remote_code: Annotated[bool, Opt("Let recipes saved or started here set model.trust_remote_code: true.")] = (
        False
    )
    ssl_certfile: Annotated[str | None, Opt("Serve HTTPS with this certificate (PEM).")] = None
    ssl_keyfile: Annotated[str | None, Opt("The certificate's private key (PEM).")] = None

    def __post_init__(self) -> None:
        problems = []
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            problems.append(Problem("--ssl-certfile/--ssl-keyfile", "go together: give both, or neither"))
        refuse("lmforge studio", problems + bound_problems(self))


__all__ = ["StudioSettings"]
