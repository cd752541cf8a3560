"""What the studio may touch: the files its pages read and write, and whether a recipe may run remote code.

The studio's Load, Save and Data pages take paths typed into the page. They are confined to the runs
folder, the folder of the recipe the studio was opened with (the working directory by default), the
folders given with ``--allow-dir`` and the recipes shipped with lmforge (read only); a recipe's data
sources are held to the same folders. A recipe that sets ``model.trust_remote_code: true`` runs code
from the model's folder: the studio saves or starts one only when it was started with
``--allow-remote-code``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ReachError(ValueError):
    """A path or setting the studio was not started to allow; the message says how to allow it."""


@dataclass(frozen=True)
class Reach:
    roots: tuple[Path, ...]
    """Folders whose files the studio reads and writes."""
    read_only: tuple[Path, ...]
    """Folders it may only read (the shipped recipes, and lmforge's own data they name: ``lmforge://``)."""
    remote_code: bool = False

    @classmethod
    def of(cls, runs_dir: Path, recipe: Path | None, allow_dirs: list[Path] | None, remote_code: bool) -> Reach:
        import lmforge
        from lmforge.config import shipped_recipe

        start = (recipe.expanduser().resolve().parent) if recipe else Path.cwd().resolve()
        roots = [
            Path(runs_dir).expanduser().resolve(),
            start,
            *(Path(d).expanduser().resolve() for d in allow_dirs or []),
        ]
        shipped = (shipped_recipe("demo").resolve().parent, Path(lmforge.__file__).resolve().parent)
        return cls(tuple(dict.fromkeys(roots)), shipped, remote_code)

    def check(self, path: str | Path, write: bool = False) -> Path:
        """``path`` resolved (symbolic links followed), when it lies in an allowed folder.

        Raises:
            ReachError: naming the path, the folders allowed and the option that allows more.
        """
        resolved = Path(path).expanduser().resolve()
        allowed = self.roots if write else (*self.roots, *self.read_only)
        if any(resolved == root or resolved.is_relative_to(root) for root in allowed):
            return resolved
        shown = ", ".join(str(root) for root in allowed)
        raise ReachError(
            f"{path}: outside the folders the studio may {'write' if write else 'read'} ({shown}); "
            "start it with --allow-dir FOLDER to add one"
        )

    def check_recipe(self, raw: dict[str, Any], recipe_dir: Path) -> None:
        """Refuse a recipe mapping whose data sources lie outside the allowed folders, or that trusts remote
        code when the studio was not started with ``--allow-remote-code``."""
        if (raw.get("model") or {}).get("trust_remote_code") is True and not self.remote_code:
            raise ReachError(
                "model.trust_remote_code: true runs code from the model's folder; the studio only saves or starts "
                "such a recipe when it was started with --allow-remote-code (or run it with lmforge run)"
            )
        for source in (raw.get("data") or {}).get("sources") or []:
            path = source.get("path") if isinstance(source, dict) else None
            if isinstance(path, str) and "://" not in path:
                target = Path(path).expanduser()
                self.check(target if target.is_absolute() else recipe_dir / target)
