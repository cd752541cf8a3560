"""The studio's recipe form, generated from the recipe schema: one field per setting, with its help text.

Every setting of :class:`~lmforge.config.Recipe` becomes a :class:`FormField`, walking nested
settings (``sft.lora.r``): a yes/no setting is a checkbox, a closed set of values a choice, a number a
number, a string a text; anything richer (lists of sources, optional sections, mappings) is edited as
a small YAML value. The help text is the setting's docstring, the one the recipe reference shows.

:func:`to_raw` turns the form's values into the recipe mapping (only what differs from the defaults,
as a hand-written recipe), :func:`from_raw` the other way; :func:`check` validates with the very code
``lmforge validate`` runs, so the form shows its messages word for word. At the end: the form on the page
(one Gradio input per field, the values of each browser session).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from lmforge.config import Recipe
from lmforge.config.recipe import check_expanded_size, validate_recipe
from lmforge.errors import ConfigError

Kind = Literal["bool", "choice", "choices", "int", "float", "text", "yaml"]


@dataclass(frozen=True)
class FormField:
    """One setting of the recipe as the form shows it."""

    path: str
    """Dotted key (``sft.lora.r``)."""
    kind: Kind
    default: Any
    """The value shown before anything is typed (YAML text for ``yaml`` fields; None when required)."""
    help: str
    choices: tuple[Any, ...] = ()
    required: bool = False

    @property
    def section(self) -> str:
        return self.path.split(".")[0] if "." in self.path else "run"


def recipe_fields() -> list[FormField]:
    """Every setting of a recipe, in the schema's order."""
    return list(_walk(Recipe, ""))


def section_help(name: str) -> str:
    """The docstring of a top-level section's settings class (``sft`` -> SFTSpec's)."""
    field = Recipe.model_fields.get(name)
    model = _model_of(field.annotation) if field is not None else None
    return inspect.cleandoc(model.__doc__ or "") if model is not None else ""


def _walk(model: type[BaseModel], prefix: str) -> typing.Iterator[FormField]:
    docs = _attribute_docs(model)
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        nested = _model_of(annotation)
        if nested is not None and not _optional(annotation):
            yield from _walk(nested, f"{path}.")
            continue
        required = field.default is PydanticUndefined and field.default_factory is None
        default = None if required else field.get_default(call_default_factory=True)
        help_text = docs.get(name) or (inspect.cleandoc(nested.__doc__ or "") if nested else "")
        yield _field(path, annotation, default, help_text, required)


def _field(path: str, annotation: Any, default: Any, help_text: str, required: bool) -> FormField:
    if annotation is bool:
        return FormField(path, "bool", default, help_text, required=required)
    if typing.get_origin(annotation) is Literal:
        return FormField(path, "choice", default, help_text, typing.get_args(annotation), required)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if typing.get_origin(item) is Literal:
            return FormField(path, "choices", list(default or []), help_text, typing.get_args(item), required)
    if annotation is int or annotation is float:
        return FormField(path, "int" if annotation is int else "float", default, help_text, required=required)
    if annotation is str:
        return FormField(path, "text", default if default is not None else "", help_text, required=required)
    shown = "" if default is None else to_yaml(to_jsonable_python(default))
    return FormField(path, "yaml", shown, help_text, required=required)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings class in ``annotation`` (``SFTSpec``, ``PairsSpec | None``), if it is one."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _optional(annotation: Any) -> bool:
    return _is_union(annotation)


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstrings written under each attribute of ``model`` and of the classes it derives from."""
    docs: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if not (inspect.isclass(klass) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for first, second in itertools.pairwise(body):
            if (
                isinstance(first, ast.AnnAssign)
                and isinstance(first.target, ast.Name)
                and isinstance(second, ast.Expr)
                and isinstance(second.value, ast.Constant)
                and isinstance(second.value.value, str)
            ):
                docs[first.target.id] = inspect.cleandoc(second.value.value)
    return docs


# ---------------------------------------------------------------- values <-> recipe mapping


class FormProblem(ValueError):
    """A form value that is not even YAML; ``path`` names the field."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def to_raw(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """The recipe mapping of the form's ``values`` (one per field): required settings and those that
    differ from their defaults, nested by their dotted keys.

    Raises:
        FormProblem: a YAML field that does not parse.
    """
    raw: dict[str, Any] = {}
    for field, value in zip(fields, values, strict=True):
        value = _parsed(field, value)
        default = _parsed(field, field.default) if field.kind == "yaml" else field.default
        if not field.required and value == default:
            continue
        if field.required and value in (None, "", []):
            continue  # left for validation to name
        node = raw
        *parents, last = field.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def _parsed(field: FormField, value: Any) -> Any:
    if field.kind == "yaml":
        text = "" if value is None else str(value)
        if not text.strip():
            return None
        try:
            parsed = yaml.safe_load(text)
            check_expanded_size(parsed)
        except yaml.YAMLError as exc:
            raise FormProblem(field.path, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
        return parsed
    if field.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if field.kind == "text" and value is None:
        return ""
    if field.kind == "choices":  # in the schema's order (stages run in pipeline order), whatever the clicks' order
        chosen = list(value or [])
        return [c for c in field.choices if c in chosen] + [c for c in chosen if c not in field.choices]
    return value


def from_raw(fields: list[FormField], raw: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """The form values of a recipe mapping, and the keys the form has no field for (typos, unknown keys)."""
    by_path = {field.path: field for field in fields}
    values = []
    for field in fields:
        found, value = _lookup(raw, field.path)
        if not found:
            values.append(field.default)
        elif field.kind == "yaml":
            values.append(to_yaml(value) if value is not None else "")
        else:
            values.append(value)
    return values, sorted(_leftovers(raw, "", by_path))


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    node = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _leftovers(raw: Any, prefix: str, by_path: dict[str, FormField]) -> typing.Iterator[str]:
    if not isinstance(raw, dict):
        return
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if path in by_path:
            continue
        if any(known.startswith(f"{path}.") for known in by_path):
            yield from _leftovers(value, f"{path}.", by_path)
        else:
            yield path


def to_yaml(value: Any) -> str:
    """YAML as a person writes it: block style, keys in their order, no document markers."""
    text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.removesuffix("...\n").rstrip("\n") if not isinstance(value, (dict, list)) else text


def parse_yaml(text: str) -> dict[str, Any]:
    """A recipe mapping from YAML text.

    Raises:
        ConfigError: not YAML, or not a mapping (the messages of ``lmforge validate``).
    """
    from lmforge.errors import Problem

    try:
        raw = yaml.safe_load(text) if text.strip() else {}
        check_expanded_size(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("recipe", [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(raw, dict):
        got = type(raw).__name__
        raise ConfigError("recipe", [Problem("", f"expected a mapping of keys at the top level, got {got}")])
    return raw


def check(raw: dict[str, Any], source: str, base_dir: Path) -> Recipe:
    """Validate a recipe mapping as ``lmforge validate`` does (paths relative to ``base_dir``).

    Raises:
        ConfigError: every problem, in the words ``lmforge validate`` prints.
    """
    raw = dict(raw)
    raw.setdefault("name", Path(source).stem)
    return validate_recipe(raw, source=source, base_dir=base_dir)


# ---------------------------------------------------------------- the form on the page


def validation_message(raw: dict[str, Any], path: str) -> str:
    """What ``lmforge validate`` says of the recipe the form holds."""
    target = Path(path or "studio-recipe.yaml").expanduser()
    try:
        recipe = check(raw, str(target), target.resolve().parent)
    except ConfigError as exc:
        return f"error: {exc}"
    return f"✔ {target} is valid: run {recipe.name!r}, stages {', '.join(recipe.stages)}"


class FormValues:
    """The recipe form's values per browser session (the last 100 sessions), starting from the defaults."""

    def __init__(self, defaults: list[Any], sessions: int = 100):
        import collections
        import threading

        self.defaults = defaults
        self.sessions = sessions
        self._values: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def values(self, request: Any) -> list[Any]:
        key = getattr(request, "session_hash", None) or "-"
        with self._lock:
            if key not in self._values:
                self._values[key] = list(self.defaults)
                while len(self._values) > self.sessions:
                    self._values.popitem(last=False)
            self._values.move_to_end(key)
            return self._values[key]

    def put(self, request: Any, values: list[Any]) -> None:
        self.values(request)[:] = values


def components(gr: Any, fields: list[FormField]) -> list[Any]:
    """One input per recipe setting, grouped by section in accordions (the run's own settings open), returned in
    the order of ``fields`` (the order values are read and written in), whatever the grouping."""
    made: dict[str, Any] = {}
    sections: dict[str, list[FormField]] = {}
    for field in fields:
        sections.setdefault(field.section, []).append(field)
    for section, members in sections.items():
        about = section_help(section).split("\n\n")[0].replace("``", "").replace("\n", " ")
        title = section if section == "run" else f"{section}: {about}"
        with gr.Accordion(title, open=section in ("run", "model", "data"), elem_id=f"section-{section}"):
            for field in members:
                label = field.path if section == "run" else field.path.split(".", 1)[1]
                label += " *" if field.required else ""
                options = {"label": label, "info": field.help, "elem_id": "field-" + field.path.replace(".", "-")}
                if field.kind == "bool":
                    component = gr.Checkbox(bool(field.default), **options)
                elif field.kind == "choice":
                    component = gr.Dropdown(list(field.choices), value=field.default, **options)
                elif field.kind == "choices":
                    component = gr.Dropdown(list(field.choices), value=list(field.default), multiselect=True, **options)
                elif field.kind in ("int", "float"):
                    component = gr.Number(field.default, precision=0 if field.kind == "int" else None, **options)
                elif field.kind == "text":
                    component = gr.Textbox(field.default, **options)
                else:
                    component = gr.Textbox(field.default, lines=2, max_lines=16, placeholder="YAML", **options)
                made[field.path] = component
    return [made[field.path] for field in fields]
