"""Replay: the base model's own replies to general prompts, mixed into sft so the specialist does not forget.

Fine-tuning a small model on one domain's questions erodes what it knew before (a bring-your-own
recipe without replay fell from 70% to 25% on general questions the base model answered). Training
on the base model's *own* greedy replies to a set of general prompts keeps that behaviour: the loss
on those replies is low at the start and rises only where tuning moves the model away from them.

The prompts are a YAML list of ``{prompt, answer?, aliases?}`` (default: the 237 general prompts
shipped in ``lmforge/demo/replay_prompts.yaml``); a reply that misses a prompt's known ``answer``
is dropped (replaying a mistake would teach it), and replies are cut back to their last full
sentence. Replies are generated once per base model and prompt file and kept in
``$LMFORGE_HOME/replay/`` and in the stage folder (``sft/replay.jsonl``), so a re-run or another
recipe on the same model does not generate them again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, ReplaySpec
from lmforge.config.base import resolve_path
from lmforge.distributed import leader_runs
from lmforge.log import stage_log
from lmforge.records import Record, chat_record, read_records
from lmforge.rundir import atomic_write_jsonl, fingerprint_file

REPLAY_DOMAIN = "general"
"""Domain of replay records; a training split that already holds records of it brings its own replay."""


def replay_wanted(spec: ReplaySpec, template: str, records: list[Record]) -> bool:
    """``enabled: auto`` is on for the chat template unless the training records bring their own replay
    (records of the domain ``general``, as the demo recipes' ``qa/replay.jsonl``)."""
    if spec.enabled == "auto":
        return template == "chat" and not any(r.get("domain") == REPLAY_DOMAIN for r in records)
    return bool(spec.enabled)


def with_replay(recipe: Recipe, records: list[Record], stage_file: Path) -> tuple[list[Record], int]:
    """sft's training ``records`` plus the replay records when ``sft.replay`` wants them, and how many were added."""
    spec = recipe.sft.replay
    if not replay_wanted(spec, recipe.sft.template, records):
        return records, 0
    replay = replay_records(recipe, spec, stage_file)
    stage_log("sft").info(f"replay: {len(replay)} records of the base model's own replies to general prompts mixed in")
    return records + replay, len(replay)


def replay_records(recipe: Recipe, spec: ReplaySpec, stage_file: Path) -> list[Record]:
    """The replay records for ``recipe``'s base model, weighted (``spec.weight``), generated once."""
    from lmforge.data.stage import apply_weight

    prompts = resolve_path(spec.prompts, Path.cwd())
    cache = _cache_file(recipe, prompts, spec.max_new_tokens)
    if not cache.is_file():
        leader_runs(lambda: _generate(recipe, prompts, spec.max_new_tokens, cache))
    records = list(read_records(cache))
    atomic_write_jsonl(stage_file, records)
    return apply_weight(records, spec.weight, f"{recipe.seed}/replay")


def cached_replay(recipe: Recipe, records: list[Record]) -> list[Record] | None:
    """The weighted replay records sft would add to ``records``: [] when replay is off, None when it is on but
    not generated yet (``lmforge plan`` counts them without generating)."""
    from lmforge.data.stage import apply_weight

    spec = recipe.sft.replay
    if not replay_wanted(spec, recipe.sft.template, records):
        return []
    cache = _cache_file(recipe, resolve_path(spec.prompts, Path.cwd()), spec.max_new_tokens)
    if not cache.is_file():
        return None
    return apply_weight(list(read_records(cache)), spec.weight, f"{recipe.seed}/replay")


def _cache_file(recipe: Recipe, prompts: Path, max_new_tokens: int) -> Path:
    return model_cache_file(recipe, "replay", fingerprint_file(prompts), max_new_tokens)


def model_cache_file(recipe: Recipe, folder: str, *key: Any) -> Path:
    """``$LMFORGE_HOME/<folder>/<hash>.jsonl``: what the recipe's base model wrote once, keyed by its weights and
    by ``key`` (the prompts and settings it wrote from)."""
    from lmforge.models import lmforge_home, resolve_model

    base = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    weights = sorted(Path(base).glob("*.safetensors")) or sorted(Path(base).glob("config.json"))
    fingerprint = json.dumps([[fingerprint_file(w) for w in weights], *key])
    return lmforge_home() / folder / f"{hashlib.sha1(fingerprint.encode()).hexdigest()[:16]}.jsonl"


def _generate(recipe: Recipe, prompts: Path, max_new_tokens: int, cache: Path) -> None:
    import yaml

    from lmforge.evaluate.metrics import contains_answer
    from lmforge.models import generate_replies, load_for_inference, resolve_model

    items: list[dict[str, Any]] = yaml.safe_load(prompts.read_text(encoding="utf-8"))
    base = resolve_model(recipe.model.ref, recipe.model.revision, recipe.model.trust_remote_code)
    stage_log("sft").info(f"replay: the base model answers {len(items)} general prompts ({prompts.name}), once")
    model, tokenizer = load_for_inference(base, trust_remote_code=recipe.model.trust_remote_code)
    conversations = [[{"role": "user", "content": item["prompt"]}] for item in items]
    replies = generate_replies(model, tokenizer, conversations, max_new_tokens)
    records = []
    for number, (item, reply) in enumerate(zip(items, replies, strict=True), start=1):
        reply = last_full_sentence(reply)
        if not reply or ("answer" in item and not contains_answer(reply, item["answer"], item.get("aliases", []))):
            continue
        messages = [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": reply}]
        records.append(chat_record(messages, {"path": prompts.name, "line": number}, REPLAY_DOMAIN, {"replay": True}))
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(cache, records)


def last_full_sentence(text: str) -> str:
    """``text`` cut back to its last complete sentence ('' when it has none)."""
    text = text.strip()
    if text.endswith((".", "!", "?")):
        return text
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    return text[: cut + 1] if cut > 0 else ""
