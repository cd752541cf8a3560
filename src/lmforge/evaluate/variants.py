"""Variants: the models an evaluation compares, and the retrieved passages a ``rag`` variant reads.

The base model is always a variant. Without ``eval.variants`` the list is ``base`` plus ``tuned``
(the result of the run's last training stage) when the run trains a causal LM — and ``sft`` too when
another fine-tuning stage follows sft (``dpo``) —, and ``base+rag`` / ``tuned+rag`` (``sft+rag``) when it
has an index stage, and with both ``tuned+routed`` (retrieval only for the questions the index
covers, :mod:`lmforge.rag.route`). A ``rag: true`` variant answers with the
passages the ``index`` stage retrieved for each question: the agreed hand-off is the file
``runs/<run>/index/retrieved/<split>.jsonl``, one line per record of the split::

    {"id": "<record id>", "passages": [{"id": "<chunk id>", "source": {...}, "text": "...", "score": 0.0}]}

and :func:`lmforge.records.context_messages` builds the prompt from them, so evaluation uses the
same prompt as ``lmforge ask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, VariantSpec
from lmforge.errors import DataError, StageError
from lmforge.models import resolve_model
from lmforge.records import read_json_lines
from lmforge.rundir import StageDir, final_model, fingerprint_files, require_done
from lmforge.stages import stage


@dataclass
class Variant:
    """A resolved variant: which weights to load and whether to add retrieved passages."""

    name: str
    model_dir: Path
    adapter_dir: Path | None
    rag: bool = False
    route: bool = False
    """With ``rag``: passages only for questions whose relevance reaches the index's routing threshold."""
    label: str = ""
    """What it is, for people: ``smollm2-135m-instruct + runs/demo/sft/adapter``."""
    identity: dict[str, Any] = field(default_factory=dict)
    """What identifies its weights (for the stage fingerprint)."""
    compare_to: str | None = None
    """Another variant it is also compared with, question by question (besides base)."""


def load_variant(variant: Variant, trust_remote_code: bool = False, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a variant, in eval mode, with its adapter merged in, cast to ``dtype`` (default fp32).

    The tokenizer (and chat template) comes from the adapter folder when it has one, as lmforge's
    sft stage saves it; an adapter trained elsewhere often ships none, and then the model's is used.
    """
    from lmforge.models import load_causal_lm, load_for_inference, load_tokenizer

    adapter = variant.adapter_dir
    if adapter is None or (adapter / "tokenizer_config.json").is_file():
        return load_for_inference(variant.model_dir, adapter, trust_remote_code, dtype)
    from peft import PeftModel

    model = load_causal_lm(variant.model_dir, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model = model.to(dtype) if dtype is not None else model
    model.eval()
    return model, load_tokenizer(variant.model_dir, trust_remote_code=trust_remote_code)


def variant_specs(recipe: Recipe) -> list[VariantSpec]:
    """The configured variants with ``base`` first; the default list when none is configured."""
    specs = list(recipe.eval.variants)
    if not specs:
        specs = [VariantSpec(name="base", model="base")]
        trains = [name for name in recipe.stages if stage(name).model == "causal"]
        has_sft = bool(trains) or final_model(recipe.run_path(), kinds=("causal",)) is not None
        # With an index, each model also answers with retrieved passages: base, base+rag, tuned, tuned+rag.
        has_index = "index" in recipe.stages or StageDir.open(recipe.run_path(), "index").status == "done"
        if has_index:
            specs.append(VariantSpec(name="base+rag", model="base", rag=True))
        # A fine-tuning stage followed by another one (sft, then dpo) is compared too: what did the next add?
        earlier = [name for name in trains if name != "cpt"][:-1]
        if has_sft:
            for name in earlier:
                specs.append(VariantSpec(name=name, model="tuned", stage=name))
            specs.append(VariantSpec(name="tuned", model="tuned", compare_to=earlier[-1] if earlier else None))
        if has_sft and has_index:
            for name in earlier:
                specs.append(VariantSpec(name=f"{name}+rag", model="tuned", stage=name, rag=True))
            before = f"{earlier[-1]}+rag" if earlier else None
            specs.append(VariantSpec(name="tuned+rag", model="tuned", rag=True, compare_to=before))
            specs.append(VariantSpec(name="tuned+routed", model="tuned", rag=True, route=True))
        return specs
    if not any(spec.name == "base" for spec in specs):
        specs.insert(0, VariantSpec(name="base", model="base"))
    return sorted(specs, key=lambda spec: spec.name != "base")


def resolve_variants(recipe: Recipe) -> list[Variant]:
    """Resolve every variant to local folders; fails before any model is loaded."""
    base_dir = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    return [_resolve(spec, recipe, base_dir) for spec in variant_specs(recipe)]


def _resolve(spec: VariantSpec, recipe: Recipe, base_dir: Path) -> Variant:
    if spec.model == "tuned":
        run_path = _run_folder(spec.run, recipe) if spec.run else recipe.run_path()
        tuned = final_model(run_path, kinds=("causal",), stages=(spec.stage,) if spec.stage else None)
        if tuned is None:
            where = f"run {spec.run!r} ({run_path})" if spec.run else "this run"
            which = f"its {spec.stage} stage has not" if spec.stage else "none of its training stages has"
            raise StageError(
                f"variant {spec.name!r} needs the tuned model of {where}, but {which} finished in {run_path}; "
                "run the recipe first (lmforge run RECIPE)"
            )
        model_dir, adapter_dir = tuned.pair
        identity = {tuned.stage: tuned.fingerprint}
        label = f"{run_path.name}: {tuned.stage} {'adapter' if adapter_dir else 'weights'}"
    else:
        ref = recipe.model.ref if spec.model == "base" else spec.model
        model_dir = base_dir if spec.model == "base" else resolve_model(ref)
        adapter_dir = Path(spec.adapter) if spec.adapter else None
        identity = {"model": ref}
        if adapter_dir is not None:
            identity["adapter"] = fingerprint_files(p for p in adapter_dir.iterdir() if p.is_file())
        label = ref + (f" + {adapter_dir}" if adapter_dir else "")
    if spec.rag:
        index = require_done(recipe.run_path(), "index", needed_by=f"eval (variant {spec.name!r})")
        identity["index"] = index.fingerprint
        label += " + routed retrieval" if spec.route else " + retrieval"
        if spec.route:
            identity["route"] = index.manifest.get("outputs", {}).get("route")
    return Variant(spec.name, model_dir, adapter_dir, spec.rag, spec.route, label, identity, spec.compare_to)


def _run_folder(run: str, recipe: Recipe) -> Path:
    path = Path(run).expanduser()
    return path if ("/" in run or path.is_absolute()) else Path(recipe.run_dir) / run


# ---------------------------------------------------------------- retrieval hand-off


def retrieved_passages(
    run_path: Path, set_name: str, needed_by: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Passages the index stage retrieved for each record of a split, and each question's relevance
    (routing), keyed by record id."""
    index = require_done(run_path, "index", needed_by=needed_by)
    path = index.path("retrieved", f"{set_name}.jsonl")
    if not path.is_file():
        raise StageError(
            f"{needed_by} needs the passages retrieved for the split {set_name!r} ({path}), which the index stage "
            f"did not write; make the index stage retrieve for the eval sets"
        )
    passages: dict[str, list[dict[str, Any]]] = {}
    relevance: dict[str, float] = {}
    for number, row in read_json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("passages"), list) or "id" not in row:
            raise DataError('expected {"id": <record id>, "passages": [...]}', path=str(path), line=number)
        passages[str(row["id"])] = row["passages"]
        if isinstance(row.get("relevance"), (int, float)):
            relevance[str(row["id"])] = float(row["relevance"])
    return passages, relevance


def route_threshold(run_path: Path, needed_by: str) -> float:
    """The routing threshold the index stage calibrated (its manifest's ``outputs.route``)."""
    index = require_done(run_path, "index", needed_by=needed_by)
    route = index.manifest.get("outputs", {}).get("route")
    if not route:
        raise StageError(
            f"{needed_by} needs the index stage's routing threshold, which it could not calibrate: none of the "
            "training questions names a source document (meta.<gold_key>, or a source/document/doc column); "
            "re-run the index stage after adding one, or drop route: true"
        )
    return float(route["threshold"])


def rag_prompts(
    prompts: list[list[dict[str, str]]],
    ids: list[str],
    passages: dict[str, list[dict[str, Any]]],
    where: str,
) -> list[list[dict[str, str]]]:
    """Prompts with each question's retrieved passages, built by ``lmforge.records.context_messages``."""
    try:
        from lmforge.records import context_messages
    except ImportError:
        raise StageError(
            "a rag variant needs lmforge.records.context_messages (the retrieval prompt builder), "
            "which this lmforge does not have"
        ) from None
    missing = [record_id for record_id in ids if record_id not in passages]
    if missing:
        raise StageError(
            f"{where}: no retrieved passages for {len(missing)} question(s), e.g. {missing[0]}; "
            "the index stage's retrieved file is older than the data; re-run the index stage"
        )
    return [context_messages(prompt, passages[record_id]) for prompt, record_id in zip(prompts, ids, strict=True)]
