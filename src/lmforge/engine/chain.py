"""Adapters carried from one stage to the next: merged into the weights, folded in, or stacked.

Where a stage starts is :mod:`lmforge.engine.start`. A cpt LoRA adapter is inherited by sft one of two ways
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

import shutil
from pathlib import Path
from typing import Any

from lmforge.distributed import leader_decides
from lmforge.models import load_causal_lm, load_tokenizer, tokenizer_folder
from lmforge.rundir import stage_folder


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
        merged.save_pretrained(staging)
        load_tokenizer(tokenizer_folder(base_dir, adapter), trust_remote_code=trust_remote_code).save_pretrained(
            staging
        )

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
    peft_model = PeftModel.from_pretrained(model, str(first), adapter_name="first")
    peft_model.load_adapter(str(second), adapter_name="second")
    ranks = {"first": peft_model.peft_config["first"].r, "second": peft_model.peft_config["second"].r}
    peft_model.add_weighted_adapter(["first", "second"], [1.0, 1.0], "stacked", combination_type="cat")
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
