"""Run directories: manifests, fingerprints and atomic writes.

``runs/<run>/<stage>/manifest.json`` records what a stage did: status (``running`` / ``done`` /
``failed``), its resolved config, the fingerprint of its inputs, library versions, times and
metrics (or, when it failed, the error). A stage whose fingerprint is unchanged and whose status
is ``done`` is skipped on re-run; one left ``running`` (killed, interrupted) or ``failed`` with the
same fingerprint is resumed.

Every file is written to a temporary name in the same folder and renamed into place, so a reader
never sees half a file and a crash never leaves one behind.

In a job of several processes only the leader (rank 0) writes: on the others every write here is
done into a scratch folder and thrown away, and removals are skipped, so the run directory after a
distributed run is the one a single process would have left (see ``distributed.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lmforge.distributed import barrier, is_leader, world
from lmforge.errors import StageError

MANIFEST = "manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it
TRACKED_LIBRARIES = ("lmforge", "torch", "transformers", "peft", "accelerate", "tokenizers", "datasets")


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only if the block succeeds.

    On a follower process (rank > 0) the temporary path lies in a scratch folder and is deleted.
    """
    path = Path(path)
    if not is_leader():
        with tempfile.TemporaryDirectory(prefix="lmforge-follower-") as scratch:
            yield Path(scratch) / path.name
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows as JSON Lines atomically; returns the number of rows."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")
            count += 1
    return count


def stage_folder(target: Path, save: Any) -> Path:
    """Call ``save(staging)`` to fill a folder, then rename it to ``target`` (replacing what was there).

    In a job of several processes only the leader saves, and every process waits here until the
    folder is in place (all of them reach this call at the same point of a stage), so a follower
    never reads a folder half-written.
    """
    if is_leader():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        save(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    barrier()
    return target


def remove_tree(path: str | Path) -> None:
    """Delete a folder of the run directory (checkpoints, stale outputs); only the leader does."""
    if is_leader():
        shutil.rmtree(path, ignore_errors=True)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- fingerprints


def fingerprint_data(obj: Any) -> str:
    """sha256 of a JSON-serialisable value, independent of key order."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """sha256 over (path, content hash) pairs, in sorted path order."""
    pairs = sorted((str(p), fingerprint_file(p)) for p in paths)
    return fingerprint_data(pairs)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# ---------------------------------------------------------------- stage directories


@dataclass
class StageDir:
    """The folder of one stage of one run, and its manifest."""

    root: Path
    stage: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, run_path: str | Path, stage: str) -> StageDir:
        root = Path(run_path) / stage
        manifest_path = root / MANIFEST
        manifest = read_json(manifest_path) if manifest_path.is_file() else {}
        for key in PORTABLE_KEYS:
            if key in manifest:
                manifest[key] = _resolved(manifest[key], Path(run_path))
        return cls(root=root, stage=stage, manifest=manifest)

    def _save(self) -> None:
        """Write the manifest with the paths inside the run folder written relative to it (``$RUN/...``)."""
        portable = dict(self.manifest)
        for key in PORTABLE_KEYS:
            if key in portable:
                portable[key] = _portable(portable[key], self.root.parent.resolve())
        atomic_write_json(self.root / MANIFEST, portable)

    @property
    def status(self) -> str | None:
        return self.manifest.get("status")

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    def is_done(self, fingerprint: str) -> bool:
        """True when the stage finished with exactly these inputs and settings."""
        return self.status == "done" and self.fingerprint == fingerprint

    def can_resume(self, fingerprint: str) -> bool:
        """True when an earlier attempt with the same inputs was interrupted or failed.

        A failed attempt resumes like an interrupted one: its checkpoints are still valid for these inputs.
        """
        return self.status in ("running", "failed") and self.fingerprint == fingerprint

    def start(self, fingerprint: str, config: dict[str, Any], inputs: dict[str, Any]) -> None:
        """Mark the stage ``running``; keeps the folder when resuming the same fingerprint."""
        if is_leader():
            self.root.mkdir(parents=True, exist_ok=True)
        resumed = self.can_resume(fingerprint)
        self.manifest = {
            "stage": self.stage,
            "status": "running",
            "fingerprint": fingerprint,
            "config": config,
            "inputs": inputs,
            "versions": library_versions(),
            "started_at": self.manifest.get("started_at") if resumed else _now(),
            "attempts": int(self.manifest.get("attempts", 0)) + 1 if resumed else 1,
            "world_size": world().size,
        }
        self._save()

    def finish(self, metrics: dict[str, Any], outputs: dict[str, Any] | None = None) -> None:
        """Mark the stage ``done`` with its metrics and output files."""
        self.manifest.update(
            status="done", finished_at=_now(), metrics=metrics, outputs=outputs or {}, elapsed_s=self._elapsed()
        )
        self._save()

    def fail(self, error: BaseException) -> None:
        """Mark the stage ``failed`` and record the error that stopped it (its type and message)."""
        self.manifest.update(
            status="failed",
            finished_at=_now(),
            error={"type": type(error).__name__, "message": str(error)},
            elapsed_s=self._elapsed(),
        )
        self._save()

    def _elapsed(self) -> float | None:
        started = self.manifest.get("started_at")
        if not started:
            return None
        return round(time.time() - time.mktime(time.strptime(started, "%Y-%m-%dT%H:%M:%S%z")), 1)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


PORTABLE_KEYS = ("inputs", "outputs")
"""Manifest sections whose paths inside the run folder are stored relative to it, so a run folder works wherever
it is copied and from any working directory (the CLI and the studio write the same)."""
RUN_PREFIX = "$RUN/"


def _portable(value: Any, run_root: Path) -> Any:
    """``value`` with every string naming a path inside ``run_root`` rewritten as ``$RUN/<relative path>``."""
    if isinstance(value, dict):
        return {k: _portable(v, run_root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, run_root) for v in value]
    if isinstance(value, str) and value and not value.startswith(RUN_PREFIX) and ("/" in value or "\\" in value):
        try:
            resolved = Path(value).resolve()
        except (OSError, RuntimeError, ValueError):
            return value
        if resolved != run_root and resolved.is_relative_to(run_root):
            return RUN_PREFIX + resolved.relative_to(run_root).as_posix()
    return value


def _resolved(value: Any, run_path: Path) -> Any:
    """The inverse of :func:`_portable`: ``$RUN/x`` becomes ``run_path/x`` (as the run folder was opened)."""
    if isinstance(value, dict):
        return {k: _resolved(v, run_path) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, run_path) for v in value]
    if isinstance(value, str) and value.startswith(RUN_PREFIX):
        return str(run_path / value[len(RUN_PREFIX) :])
    return value


def require_done(run_path: str | Path, stage: str, needed_by: str) -> StageDir:
    """Open a predecessor stage, failing clearly if it has not finished."""
    stage_dir = StageDir.open(run_path, stage)
    if stage_dir.status != "done":
        state = stage_dir.status or "not run"
        raise StageError(
            f"stage {needed_by!r} needs the output of stage {stage!r} in {stage_dir.root}, which is {state}; "
            f"add {stage!r} to the recipe's stages (or run it first)"
        )
    return stage_dir


def split_path(run_path: str | Path, split: str, needed_by: str) -> Path:
    """Path of one split, failing clearly when it does not exist.

    Splits come from the ``data`` stage, or from a later finished stage that publishes splits in
    its manifest's ``outputs.splits`` (the ``index`` stage writes ``raft`` there).
    """
    data = require_done(run_path, "data", needed_by)
    splits = data.manifest.get("outputs", {}).get("splits", {})
    if split in splits:
        return Path(splits[split])
    for manifest_path in sorted(Path(run_path).glob(f"*/{MANIFEST}")):
        other = StageDir.open(run_path, manifest_path.parent.name)
        published = other.manifest.get("outputs", {}).get("splits", {}) if other.status == "done" else {}
        if other.stage != "data" and split in published:
            return Path(published[split])
    raise StageError(
        f"stage {needed_by!r} needs the split {split!r}, but the data stage wrote only {sorted(splits)}; "
        "assign it with a data source's 'split' key (or enable the stage that writes it, e.g. index.raft)"
    )


@dataclass(frozen=True)
class FinalModel:
    """The model a run produced (:func:`final_model`)."""

    stage: str
    """The finished stage that trained it (``sft``, ``cpt``, ``seq2seq``...)."""
    kind: str
    """``causal``, ``encoder`` or ``seq2seq`` (the stage table's ``model``)."""
    model_dir: Path
    """Full weights, or the base model under :attr:`adapter_dir`."""
    adapter_dir: Path | None
    fingerprint: str | None
    """The stage's fingerprint: what it was trained from and with."""

    @property
    def pair(self) -> tuple[Path, Path | None]:
        return self.model_dir, self.adapter_dir


def is_run_dir(path: str | Path) -> bool:
    """True for a folder lmforge ran a recipe in (its ``recipe.json``, or a stage folder)."""
    from lmforge.stages import STAGE_ORDER

    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "recipe.json").is_file() or any((path / name).is_dir() for name in STAGE_ORDER)


def final_model(
    run_path: str | Path, kinds: tuple[str, ...] | None = None, stages: tuple[str, ...] | None = None
) -> FinalModel | None:
    """The model a run produced: that of its last finished training stage in pipeline order (``sft`` after
    ``cpt``, ``dpo`` after ``sft``), of one of ``kinds`` and ``stages`` when given (dpo asks for the stages
    before it: what it starts from; an eval variant may name one stage); None when no such stage has
    finished. Eval's ``tuned`` variant, ``ask``, ``serve``, ``export``, distillation from a run and model
    references to a run all ask this.
    """
    from lmforge.stages import TRAINING_STAGES, stage

    listed = _recipe_stages(run_path)
    for name in reversed(TRAINING_STAGES):
        kind = stage(name).model
        if (kinds is not None and kind not in kinds) or (stages is not None and name not in stages):
            continue
        if listed is not None and name not in listed:
            continue  # a stage the run's recipe no longer has (its folder stays, its model is not the run's)
        found = StageDir.open(run_path, name)
        if found.status != "done":
            continue
        _refuse_stale(run_path, found)
        outputs = found.manifest.get("outputs", {})
        if outputs.get("adapter"):
            model_dir, adapter = Path(outputs["base_model"]), Path(outputs["adapter"])
        elif outputs.get("model"):
            model_dir, adapter = Path(outputs["model"]), None
        else:
            continue
        return FinalModel(name, str(kind), model_dir, adapter, found.fingerprint)
    return None


def _recipe_stages(run_path: str | Path) -> list[str] | None:
    """The stages of the recipe the run was last run with (``recipe.json``); None when it has none."""
    path = Path(run_path) / "recipe.json"
    try:
        stages = read_json(path).get("stages") if path.is_file() else None
    except (OSError, ValueError):
        return None
    return list(stages) if isinstance(stages, list) else None


def _refuse_stale(run_path: str | Path, found: StageDir) -> None:
    """Refuse a stage trained from another stage's result when that stage was trained again since: its model
    no longer follows from the run (``lmforge run --only sft`` after dpo, for one)."""
    start = (found.manifest.get("inputs") or {}).get("starts_from")
    if not isinstance(start, dict) or not start.get("stage") or not start.get("fingerprint"):
        return
    upstream = StageDir.open(run_path, start["stage"])
    if upstream.fingerprint == start["fingerprint"]:
        return
    from lmforge.errors import ModelError

    raise ModelError(
        f"{found.stage} in {run_path} was trained from an earlier {start['stage']} result; {start['stage']} has been "
        f"trained again since ({upstream.status or 'removed'}), so {found.stage}'s model no longer follows from "
        "the run. "
        f"Run the recipe again (lmforge run) so {found.stage} trains on the new {start['stage']}, or remove "
        f"{found.stage} from the recipe's stages"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
