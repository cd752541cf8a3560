"""Settings that are also command-line options, written once.

A command's settings dataclass marks each field with :class:`Opt` (``port: Annotated[int, Opt("TCP port.",
min=0, max=65535)] = 8000``): the help text, the bounds and the option's name live there and nowhere else.
``lmforge.cli_common.settings_command`` turns the marked fields into the command's options, and the
dataclass's own check (:func:`bound_problems`, called in ``__post_init__``) applies the same bounds when the
settings are built in Python (the studio's chat, tests).

This module imports nothing of lmforge but ``errors``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from lmforge.errors import Problem


@dataclass(frozen=True)
class Opt:
    """How a settings field reads as a command-line option."""

    help: str
    min: float | None = None
    max: float | None = None
    flag: str | None = None
    """The option's name without dashes when it is not the field's (``allowed-host`` for ``allowed_hosts``)."""

    def option_name(self, field_name: str) -> str:
        return "--" + (self.flag or field_name.replace("_", "-"))


@dataclass(frozen=True)
class Marked:
    """A settings field with its type (without the marker) and its :class:`Opt`."""

    field: dataclasses.Field
    kind: Any
    opt: Opt

    @property
    def default(self) -> Any:
        """The field's default (None for a list, which the command leaves empty unless the option is given)."""
        return None if self.field.default is dataclasses.MISSING else self.field.default


def marked_fields(settings_class: type) -> list[Marked]:
    """The fields of a settings dataclass that carry an :class:`Opt`, in declaration order."""
    hints = typing.get_type_hints(settings_class, include_extras=True)
    found = []
    for field in dataclasses.fields(settings_class):
        hint = hints[field.name]
        if typing.get_origin(hint) is Annotated:
            kind, *extras = typing.get_args(hint)
            found += [Marked(field, kind, extra) for extra in extras if isinstance(extra, Opt)]
    return found


def bound_problems(settings: Any) -> list[Problem]:
    """One problem per marked field whose value lies outside its ``min``/``max`` (None is always accepted)."""
    problems = []
    for marked in marked_fields(type(settings)):
        value, low, high = getattr(settings, marked.field.name), marked.opt.min, marked.opt.max
        if value is None or ((low is None or value >= low) and (high is None or value <= high)):
            continue
        expected = (
            f"{_number(low)} to {_number(high)}"
            if low is not None and high is not None
            else f"at least {_number(low)}"
            if low is not None
            else f"at most {_number(high)}"
        )
        problems.append(Problem(marked.opt.option_name(marked.field.name), f"got {value}; expected {expected}"))
    return problems


def _number(value: float | None) -> str:
    return f"{value:g}"


__all__ = ["Marked", "Opt", "bound_problems", "marked_fields"]
