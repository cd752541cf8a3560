"""Shared pieces of the recipe models: the strict base model, path resolution and error rewriting.

Every recipe model derives from :class:`Strict` (unknown keys are errors). Paths in a recipe are
relative to the recipe's folder, or ``lmforge://...`` for files shipped inside the package.
:func:`describe_error` turns a pydantic error into a :class:`~lmforge.errors.Problem` that names the
key, the value received and what was expected.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lmforge.errors import ConfigError, Problem

PACKAGE_SCHEME = "lmforge://"
"""Prefix of paths inside the installed package, e.g. ``lmforge://demo/articles``."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def package_dir() -> Path:
    """Directory of the installed ``lmforge`` package (holds ``demo/``)."""
    return Path(str(importlib.resources.files("lmforge")))


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped with lmforge (``recipes/<name>.yaml``), installed or in a checkout."""
    candidates = [package_dir() / "recipes" / f"{name}.yaml", package_dir().parents[1] / "recipes" / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"recipes/{name}.yaml", [Problem("", f"shipped recipe not found; looked in {candidates}")])


def resolve_path(value: str, base_dir: Path) -> Path:
    """Resolve a recipe path: ``lmforge://`` -> the package, relative -> the recipe's folder.

    Raises:
        ValueError: an ``lmforge://`` path that leads out of the package folder (``..``, an absolute part).
    """
    if value.startswith(PACKAGE_SCHEME):
        root = package_dir()
        inside = root / value[len(PACKAGE_SCHEME) :]
        if not inside.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{value!r} leads out of the lmforge package folder; lmforge:// paths stay inside it")
        return inside
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path)


_UNION_BRANCH = re.compile(r"^(constrained-|literal\[|function-|lax-|strict-|(int|float|str|bool)$)")
"""A part of a pydantic error location that names a branch of a union (``sft.lr.constrained-float``)."""


def describe_errors(errors: list[dict[str, Any]], root: type[BaseModel]) -> list[Problem]:
    """:func:`describe_error` for each error, with the errors of the branches of one union (a number or
    ``auto``) merged into one problem at the key: ``got 0; expected greater than 0 or 'auto'``."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_BRANCH.match(p)))
        grouped.setdefault(loc, []).append({**err, "loc": loc})
    problems = []
    for group in grouped.values():
        described = [describe_error(err, root) for err in group]
        first = described[0]
        if len(described) == 1 or not first.message.startswith("got "):
            problems.append(first)
            continue
        got = first.message.split("; ", 1)[0]
        wanted = [d.message.split("; ", 1)[-1].removeprefix("expected ") for d in described]
        problems.append(Problem(first.where, f"{got}; expected {' or '.join(dict.fromkeys(wanted))}"))
    return problems


def describe_error(err: dict[str, Any], root: type[BaseModel]) -> Problem:
    """Turn one pydantic error on the model ``root`` into a Problem that names the key, the value and the
    expectation; an unknown key gets a did-you-mean hint from the field names at its place."""
    loc = [str(part) for part in err["loc"]]
    where = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return Problem(where, f"unknown key{hint}; expected one of: {', '.join(allowed)}")
    if kind == "missing":
        return Problem(where, "required key is missing")
    message = err["msg"]
    message = message.removeprefix("Value error, ")
    message = message.replace("Input should be", "expected").replace("Input should have", "expected")
    received = err.get("input")
    if isinstance(received, (dict, list)) or kind.startswith("value_error"):
        return Problem(where, message)
    shown = repr(received)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Problem(where, f"got {shown}; {message}")


def _allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model found at ``loc`` inside ``root`` (list indices skipped)."""
    model: type[BaseModel] = root
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        inner = _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
