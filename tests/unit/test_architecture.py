"""The layer rule of docs/ARCHITECTURE.md holds for every import of the package, and the stage table is the
only place that lists stages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "lmforge"
STAGE_NAMES = {"data", "synth", "index", "cpt", "mlm", "sft", "seq2seq", "dpo", "grpo", "eval"}


def layers() -> dict[str, int]:
    """Unit (first part below ``lmforge``, or ``lmforge`` itself) -> layer, read from docs/ARCHITECTURE.md."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("<!-- layers:", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    table = {}
    for line in block.strip().splitlines():
        number, _name, *units = line.split()
        table.update({unit: int(number) for unit in units})
    return table


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "lmforge"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "lmforge":
            if node.module == "lmforge":  # from lmforge import engine -> the unit is the name imported
                found += [(node.lineno, f"lmforge.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def upward_imports(table: dict[str, int]) -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("lmforge", *path.relative_to(PACKAGE).with_suffix("").parts))
        own = unit_of(module.removesuffix(".__init__"))
        if own not in table:
            problems.append(f"{path.relative_to(ROOT)}: {own!r} has no layer in docs/ARCHITECTURE.md")
            continue
        for line, target in imported_modules(path):
            other = unit_of(target)
            if not (PACKAGE / other).is_dir() and not (PACKAGE / f"{other}.py").is_file():
                other = "lmforge"  # a name defined in the package's __init__ (__version__)
            if table.get(other, 99) > table[own]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line} ({own}, layer {table[own]}) imports {target} "
                    f"(layer {table.get(other, '?')})"
                )
    return problems


def test_every_import_points_down_or_sideways():
    table = layers()
    assert table["errors"] < table["data"] < table["engine"] < table["evaluate"] < table["train"] < table["cli"]
    assert not (problems := upward_imports(table)), "imports against the layer rule:\n" + "\n".join(problems)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule bites: with the engine placed above the stage scripts, the stage scripts' imports of it
    are fine but the engine's own imports are not, and vice versa."""
    table = layers()
    swapped = dict(table, engine=table["train"], train=table["engine"])
    problems = upward_imports(swapped)
    assert any(p.startswith("src/lmforge/train/") and "imports lmforge.engine" in p for p in problems)


def stage_lists(source: str) -> list[tuple[int, list[str]]]:
    """Lists, tuples and sets in ``source`` holding two or more stage names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in STAGE_NAMES]
            if len(names) >= 2:
                found.append((node.lineno, names))
    return found


def test_only_the_stage_table_lists_stages():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "stages.py":
            continue
        for line, names in stage_lists(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line} spells {names}")
    assert not offenders, "stage lists outside lmforge/stages.py (derive them from the table):\n" + "\n".join(offenders)


def test_the_stage_list_check_bites():
    """The studio's old copy of the training stages, and the plan's old tuple, are found."""
    assert stage_lists('TRAINING = ("cpt", "mlm", "sft", "seq2seq", "dpo")\n') == [
        (1, ["cpt", "mlm", "sft", "seq2seq", "dpo"])
    ]
    assert stage_lists('for stage in ["cpt", "sft"]:\n    pass\n') == [(1, ["cpt", "sft"])]
    assert stage_lists('LOSSES = ("sigmoid", "ipo")\nx = ["data"]\n') == []


def long_code(limit_function: int = 80, limit_file: int = 550) -> list[str]:
    """Functions of ``src/`` longer than ``limit_function`` lines and files longer than ``limit_file``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > limit_file:
            found.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > limit_function:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_functions_and_files_stay_small():
    assert not (found := long_code()), "split these (docs/STYLE: a function reads on one screen):\n" + "\n".join(found)
    assert long_code(limit_function=40), "the check finds long functions when the limit is lower"


def test_stage_entry_modules_follow_one_naming_rule():
    """A package that holds one stage names its entry ``stage.py``; the training package, which holds several,
    names each after its stage (docs/ARCHITECTURE.md)."""
    from lmforge.stages import STAGES

    for row in STAGES:
        package, module = row.entry.split(".")[1:]
        assert module == ("stage" if package != "train" else row.name), row
        assert (PACKAGE / package / f"{module}.py").is_file(), row
