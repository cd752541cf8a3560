"""``lmforge push``: upload a run's export (the HF folder with its model card, the GGUF files, the Modelfile)
to a model hub, only when a token is there; the token is read from the environment and never printed."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import ConfigError, Problem, StageError

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def push_export(run: Path, repo: str, private: bool = True, endpoint: str | None = None) -> str:
    """Upload ``run/export`` to the model repository ``repo`` (``owner/name``) of the hub at ``endpoint`` (default:
    huggingface_hub's, ``$HF_ENDPOINT``); returns the repository's address.

    Raises:
        ConfigError: no export yet, a malformed repository name, or no token in the environment.
        StageError: the hub could not be reached or refused the upload (the reason, without the token).
    """
    export = Path(run) / "export"
    problems = []
    if not (export / "hf" / "README.md").is_file():
        problems.append(Problem("RUN", f"{export} holds no export with a model card; run lmforge export {run} first"))
    if repo.count("/") != 1 or not all(repo.split("/")):
        problems.append(Problem("--repo", f"got {repo!r}; expected owner/name"))
    token = next((os.environ[name] for name in TOKEN_VARIABLES if os.environ.get(name)), None)
    if token is None:
        problems.append(Problem("token", f"set {' or '.join(TOKEN_VARIABLES)} in the environment to push"))
    if problems:
        raise ConfigError("lmforge push", problems)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(export / "hf"), repo_id=repo, commit_message="lmforge export")
        for gguf in sorted(export.glob("*.gguf")) + sorted(export.glob("Modelfile")):
            api.upload_file(path_or_fileobj=str(gguf), path_in_repo=gguf.name, repo_id=repo)
    except Exception as exc:
        reason = str(exc).replace(token, "***")
        raise StageError(f"lmforge push: could not upload to {repo}: {type(exc).__name__}: {reason[:300]}") from None
    return f"{api.endpoint}/{repo}"
