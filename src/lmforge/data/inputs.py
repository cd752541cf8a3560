"""Which inputs a source names: files, folders, globs, saved datasets and hub datasets.

A folder names its supported files and saved datasets, recursively, following links to folders
once each (a link cycle is walked once); a glob names what it matches (``**`` does not follow links
to folders); a path that exists is taken literally even when its name holds glob characters
(``a[1].jsonl``). A file reached under two names (a link and its target) is read once.

Inputs that are not regular files (devices, FIFOs, broken links) are still listed, so that reading
reports them (``not a regular file``), but they are never opened and never fingerprinted: reading
``/dev/zero`` or a pipe would never end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lmforge.config import HUB_SCHEME
from lmforge.data import documents
from lmforge.errors import DataError

DATASET_SUFFIXES = {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"}
SUPPORTED_SUFFIXES = DATASET_SUFFIXES | documents.DOCUMENT_SUFFIXES
GLOB_CHARS = "*?["


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def hub_id(item: Path) -> str | None:
    """The dataset id when an input names a hub dataset (``hf://org/name``, which Path folds to ``hf:/``)."""
    text = str(item)
    return text.split(":/", 1)[1].lstrip("/") if text.startswith(HUB_SCHEME[:-1]) else None


def expand_source(path: str) -> tuple[list[Path], list[str]]:
    """Inputs named by a source path, sorted, and the files of a folder that were skipped (unsupported).

    A file names itself, whatever its type (an unsupported one, a device or a FIFO is reported when
    read); folders, globs and links as in the module docstring. Of two names for one file, the first in
    sorted order is kept.

    Raises:
        DataError: nothing exists at ``path``, or it matches no input.
    """
    if path.startswith(HUB_SCHEME):
        return [Path(path)], []
    root = Path(path)
    if is_glob(path):
        inputs, skipped = _glob_inputs(path), []
    elif not os.path.lexists(path):
        hint = "check the path (a recipe's paths are relative to the recipe file)"
        raise DataError("no such file or folder", path=path, hint=hint)
    elif not root.is_dir() or is_saved_dataset(root):
        return [root], []
    else:
        inputs, skipped = _folder_inputs(root)
    if not inputs:
        found = f"; it holds only unsupported files: {', '.join(skipped[:5])}" if skipped else ""
        raise DataError(f"the source matches no file{found}", path=path, hint="check the path or glob")
    return _once_each(sorted(inputs)), sorted(skipped)


def is_glob(path: str) -> bool:
    """True when ``path`` is a glob pattern: it has glob characters and does not exist as it is written."""
    return any(ch in path for ch in GLOB_CHARS) and not os.path.lexists(path)


def _glob_root(pattern: str) -> tuple[Path, str]:
    """The longest leading folder of a glob that exists as written (``exports [2024]``), and the rest."""
    parts = Path(pattern).parts
    for end in range(len(parts) - 1, 0, -1):
        if Path(*parts[:end]).is_dir():
            return Path(*parts[:end]), str(Path(*parts[end:]))
    return Path(), pattern


def _glob_inputs(pattern: str) -> list[Path]:
    """Files (and saved datasets) a glob matches, hidden ones only when the pattern names them."""
    root, rest = _glob_root(pattern)
    try:
        matches = list(root.glob(rest))
    except ValueError as exc:  # e.g. '**' inside a name
        raise DataError(f"invalid glob pattern: {exc}", path=pattern, hint="'**' must be a whole path part") from None
    hidden_ok = any(part.startswith(".") for part in Path(rest).parts)
    return [
        match
        for match in matches
        if (hidden_ok or not any(part.startswith(".") for part in match.relative_to(root).parts))
        and (not match.is_dir() or is_saved_dataset(match))
    ]


def _folder_inputs(root: Path) -> tuple[list[Path], list[str]]:
    """A folder's supported files and saved datasets, recursively; each real folder is walked once (no cycles)."""
    inputs: list[Path] = []
    skipped: list[str] = []
    walked = {os.path.realpath(root)}
    for folder, subdirs, names in os.walk(root, followlinks=True):
        here = Path(folder)
        keep = []
        for sub in sorted(subdirs):
            real = os.path.realpath(here / sub)
            if sub.startswith(".") or real in walked:
                continue
            walked.add(real)
            if is_saved_dataset(here / sub):
                inputs.append(here / sub)
            else:
                keep.append(sub)
        subdirs[:] = keep
        for name in names:
            if name.startswith("."):
                continue
            file = here / name
            if file.suffix.lower() in SUPPORTED_SUFFIXES:
                inputs.append(file)
            else:
                skipped.append(printable_name(str(file.relative_to(root))))
    return inputs, skipped


def _once_each(paths: list[Path]) -> list[Path]:
    """``paths`` without later names of the same file (links), in order."""
    seen: set[str] = set()
    unique = []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def not_regular_file(path: Path) -> str | None:
    """Why an input that is not a folder cannot be read as a file (a device, a FIFO, a broken link), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else "it no longer exists"
    except OSError as exc:  # a link loop, a permission problem on the way
        return f"it cannot be opened ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    link = f" (a link to {printable_name(os.path.realpath(path))})" if path.is_symlink() else ""
    return f"{kind}{link}; only regular files are read, since a device or a pipe may never end"


def files_to_fingerprint(inputs: list[Path]) -> list[Path]:
    """The regular files whose bytes decide a source's content (a saved dataset's files included).

    Devices, FIFOs and broken links are left out: they are rejected unread, and reading them could block.
    """
    files: list[Path] = []
    for item in inputs:
        if hub_id(item):
            continue
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file()))
        elif item.is_file():
            files.append(item)
    return files


def display_path(file: Path, source_path: str) -> str:
    """A short, machine-independent name: relative to the source folder's parent when inside it (printable)."""
    if source_path.startswith(HUB_SCHEME):
        return source_path
    root = _glob_root(source_path)[0] if is_glob(source_path) else Path(source_path)
    anchor = root.parent if root.is_dir() or root == file else root
    try:
        shown = str(file.relative_to(anchor))
    except ValueError:
        shown = file.name
    return printable_name(shown)


def printable_name(name: str) -> str:
    """A file name with the bytes that are not UTF-8 (kept by the OS layer as surrogates) written as ``\\xNN``,
    so that it can be printed and written to ``stats.json`` and ``rejects.jsonl``."""
    return name.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
