"""Where sft starts: the base model, or the result of the cpt stage run before it in the same recipe.

A full cpt result is simply the new base. A cpt LoRA adapter is inherited one of two ways
(``sft.chain``):

* ``merge``: the adapter is folded into the base weights once, in fp32, and saved as ``sft/base``;
  sft trains a fresh adapter on that folder, and the run's tuned model is ``sft/base`` + ``sft/adapter``.
* ``stack``: sft loads the original base with the cpt adapter folded in (in memory), trains a fresh
  adapter over it, and saves both as *one* adapter on the original base: the A matrices of the two
  are stacked (each scaled by its alpha / r) and the B matrices placed side by side, so
  ``B_stacked @ A_stacked`` is exactly the sum of the two updates (rank r_cpt + r_sft). Nothing but
  the small adapter is written, and every consumer (eval, serve, export) loads it as usual.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.distributed import leader_decides
from lmforge.errors import StageError
from lmforge.models import load_causal_lm, load_tokenizer, resolve_model
from lmforge.rundir import require_done, stage_folder


@dataclass
class StartingPoint:
    """What sft trains on top of, and how it got there."""

    base_dir: Path
    """Folder the weights are loaded from (the original base, cpt's full weights, or sft/base once merged)."""
    how: str
    """``base``, ``cpt-full``, ``cpt-merge`` or ``cpt-stack``."""
    description: str
    """One line for the terminal and the manifest."""
    cpt_adapter: Path | None = None
    """The cpt LoRA adapter (``cpt-merge``: merged into sft/base; ``cpt-stack``: folded in, then stacked)."""
    cpt_fingerprint: str | None = None
    """Fingerprint of the cpt stage, part of sft's own."""
    original_base: Path | None = None
    """The recipe's base model folder."""

    def as_manifest(self) -> dict[str, Any]:
        """What the manifest records (``stage``/``fingerprint``: the cpt result started from, which
        :func:`lmforge.rundir.final_model` checks is still the run's)."""
        return {
            "how": self.how,
            "description": self.description,
            "base_dir": str(self.base_dir),
            "cpt_adapter": str(self.cpt_adapter) if self.cpt_adapter else None,
            "stage": "cpt" if self.cpt_fingerprint else None,
            "fingerprint": self.cpt_fingerprint,
        }


def starting_point(recipe: Recipe) -> StartingPoint:
    """The base model, or the finished cpt stage's result when the recipe lists cpt before sft."""
    original = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    if "cpt" not in recipe.stages:
        return StartingPoint(original, "base", f"base model {recipe.model.ref} ({original})", original_base=original)
    cpt = require_done(recipe.run_path(), "cpt", needed_by="sft")
    outputs = cpt.manifest.get("outputs", {})
    if outputs.get("model"):
        model_dir = Path(outputs["model"])
        return StartingPoint(
            model_dir,
            "cpt-full",
            f"inherits the cpt stage's fully trained weights ({model_dir})",
            cpt_fingerprint=cpt.fingerprint,
            original_base=original,
        )
    adapter = Path(outputs["adapter"])
    if recipe.sft.chain == "stack":
        _check_stackable(recipe, adapter)
        how, text = (
            "cpt-stack",
            f"inherits the cpt adapter {adapter}, stacked under a new sft adapter (one file on save)",
        )
    else:
        how, text = "cpt-merge", f"inherits the cpt adapter {adapter}, merged into the base weights (sft/base)"
    return StartingPoint(
        original, how, text, cpt_adapter=adapter, cpt_fingerprint=cpt.fingerprint, original_base=original
    )


def _check_stackable(recipe: Recipe, adapter: Path) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    problems = []
    if config.get("use_dora") or config.get("modules_to_save"):
        problems.append("the cpt adapter uses DoRA or trained embeddings")
    sft = recipe.sft
    if sft.method != "lora" or sft.lora.use_dora or sft.lora.train_embeddings:
        problems.append("sft is not plain LoRA (method lora, no DoRA, no trained embeddings)")
    if sft.quantization != "none":
        problems.append("sft quantizes the base, which cannot hold the folded-in cpt adapter")
    if problems:
        raise StageError(
            f"sft.chain: stack concatenates two plain LoRA adapters, but {'; '.join(problems)}; "
            "use sft.chain: merge (the default)"
        )


def merged_base(start: StartingPoint, target: Path, trust_remote_code: bool) -> Path:
    """``chain: merge``: fold the cpt adapter into the base weights (fp32) and save them to ``target`` once."""
    assert start.cpt_adapter is not None
    return merge_adapter(start.base_dir, start.cpt_adapter, target, trust_remote_code)


def merge_adapter(base_dir: Path, adapter: Path, target: Path, trust_remote_code: bool) -> Path:
    """Fold ``adapter`` into the weights of ``base_dir`` (fp32) and save them, with the adapter's tokenizer,
    to ``target``, once: a later stage trains a fresh adapter on the result (sft after cpt, dpo after sft).
    In a job of several processes the leader merges and saves while the others wait."""
    complete = (target / "config.json").is_file() and any(target.glob("*.safetensors"))
    if leader_decides(complete):
        return target  # written by an earlier, interrupted attempt with the same fingerprint

    def merge_into(staging: Path) -> None:
        import torch
        from peft import PeftModel

        base = load_causal_lm(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
        merged.save_pretrained(staging)
        load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code).save_pretrained(staging)

    return stage_folder(target, merge_into)


def fold_in_adapter(model: Any, adapter: Path) -> Any:
    """The model with ``adapter`` merged into its weights, in the weights' own dtype (exact for fp32)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def stack_adapters(base_dir: Path, first: Path, second: Path, target: Path) -> dict[str, int]:
    """Save ``first`` + ``second`` (two LoRA adapters of ``base_dir``) as one adapter in ``target``.

    Uses PEFT's ``cat`` combination: A = [s1 * A1; s2 * A2], B = [B1, B2], alpha = rank, so the
    stacked update equals the sum of both. The tokenizer files of ``second`` are kept.

    Returns:
        The ranks: ``first``, ``second``, ``stacked``.
    """
    import torch
    from peft import PeftModel

    model = load_causal_lm(base_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(first), adapter_name="cpt")
    peft_model.load_adapter(str(second), adapter_name="sft")
    ranks = {"first": peft_model.peft_config["cpt"].r, "second": peft_model.peft_config["sft"].r}
    peft_model.add_weighted_adapter(["cpt", "sft"], [1.0, 1.0], "stacked", combination_type="cat")
    ranks["stacked"] = peft_model.peft_config["stacked"].r
    staging = target.with_name(target.name + ".stack-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(str(staging), selected_adapters=["stacked"])
    saved = staging / "stacked" if (staging / "stacked").is_dir() else staging
    for tokenizer_file in second.iterdir():
        if not tokenizer_file.name.startswith("adapter_") and tokenizer_file.is_file():
            shutil.copy2(tokenizer_file, saved / tokenizer_file.name)
    shutil.rmtree(target, ignore_errors=True)
    saved.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return ranks
