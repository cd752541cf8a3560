"""The ``synth`` stage: a teacher writes canonical chat records from documents or prompts.

setup (inputs from the data stage, teacher, request cache) -> generate (one request per chunk or
prompt) -> judge (optional) -> paraphrase (optional) -> filter and deduplicate -> save.

Outputs in ``runs/<run>/synth/``:

* ``records.jsonl``: canonical chat records, published as split ``synth.output_split`` (list it in ``sft.splits``);
* ``rejects.jsonl``: every reply that could not be used, with its source, the reason and the raw reply;
* ``stats.json``: requests (sent, cached, retries, failures), tokens, cost, items kept / rejected / filtered;
* ``cache.sqlite``: every reply, keyed by (teacher, messages, parameters): a rerun never sends a request twice.

A request that still fails after its retries (rate limit, server down) leaves the stage unfinished:
rerun the recipe and it carries on from the cache.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Recipe, SynthSpec
from lmforge.distributed import is_leader
from lmforge.errors import StageError
from lmforge.log import stage_log
from lmforge.records import Record, chat_record, read_records
from lmforge.redact import redact_values
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, split_path
from lmforge.synth import tasks
from lmforge.synth.asking import Asker, judge_messages, open_teacher, progress_bar
from lmforge.synth.items import Item, Tally, where
from lmforge.synth.teacher import Counters, RequestCache, Teacher


@dataclass
class SynthResult:
    records_path: Path
    stats_path: Path
    metrics: dict[str, Any]
    skipped: bool


def run(recipe: Recipe) -> SynthResult:
    """Synthesize records with the recipe's teacher; reuse the previous output when nothing changed."""
    spec = recipe.synth
    run_path = recipe.run_path()
    stage = StageDir.open(run_path, "synth")
    input_split = spec.input_split or ("prompts" if spec.task == "answer" else "documents")
    inputs_path = split_path(run_path, input_split, needed_by="synth")
    data_fingerprint = StageDir.open(run_path, "data").fingerprint
    # The manifest must not hold credentials put in the URL (and rotating them must not rerun the stage).
    synth_config = redact_values(spec.model_dump(mode="json"))
    config = {
        "synth": synth_config,
        "model": recipe.model.ref,
        "system_prompts": recipe.data.system_prompts,
    }
    fingerprint = fingerprint_data([config, data_fingerprint])
    if stage.is_done(fingerprint):
        return SynthResult(stage.path("records.jsonl"), stage.path("stats.json"), stage.manifest["metrics"], True)

    stage.start(fingerprint, config, {"data": data_fingerprint, "inputs": str(inputs_path)})
    inputs = list(read_records(inputs_path))[: spec.limit]
    if not inputs:
        raise StageError(f"synth: the {input_split!r} split ({inputs_path}) is empty; nothing to synthesize from")
    teacher = open_teacher(spec.teacher, recipe.model.ref)
    stage_log("synth").info(f"{spec.task} on {len(inputs)} {input_split} records with teacher {teacher.identity}")
    # Under a launcher only a local teacher's synth runs on every process; the leader alone keeps the cache.
    cache = RequestCache(stage.path("cache.sqlite")) if is_leader() else None
    started = time.perf_counter()
    try:
        items, tally, counters = asyncio.run(synthesize(spec, inputs, teacher, cache, recipe.seed))
    finally:
        if cache is not None:
            cache.close()
    elapsed = time.perf_counter() - started

    records = to_records(items, spec, recipe.data.system_prompts, tally)
    records = _not_evaluated(recipe, input_split, records, tally)
    atomic_write_jsonl(stage.path("rejects.jsonl"), tally.rejects)
    metrics = _metrics(spec, inputs, records, tally, counters, elapsed)
    atomic_write_json(stage.path("stats.json"), metrics)
    if counters.failed:
        raise StageError(
            f"synth: {counters.failed} request(s) failed after {spec.teacher.max_retries} retries "
            f"({dict(counters.errors)}); {counters.sent + counters.cached} replies are cached in "
            f"{stage.path('cache.sqlite')}: rerun the same command to finish without re-sending them"
        )
    records_path = stage.path("records.jsonl")
    atomic_write_jsonl(records_path, records)
    if not records:
        stage_log("synth").warning(f"no usable records; see the reasons in {stage.path('rejects.jsonl')}")
    outputs = {"splits": {spec.output_split: str(records_path)}, "rejects": str(stage.path("rejects.jsonl"))}
    stage.finish(metrics, outputs=outputs)
    return SynthResult(records_path, stage.path("stats.json"), metrics, False)


# ---------------------------------------------------------------- the async work


async def synthesize(
    spec: SynthSpec, inputs: list[Record], teacher: Teacher, cache: RequestCache | None, seed: int = 0
) -> tuple[list[Item], Tally, Counters]:
    """Run the task's phases; returns the items, what was rejected and the request counters."""
    tally = Tally()
    with progress_bar() as progress:
        asker = Asker(spec.teacher, teacher, cache, progress)
        try:
            if spec.task == "answer":
                items = await _answer(spec, inputs, asker, tally)
            elif spec.task in ("facts_from_docs", "entigraph"):
                from lmforge.synth import facts

                chunks = _text_chunks(inputs, tally)
                if spec.task == "facts_from_docs":
                    items = await facts.facts_from_docs(spec, chunks, asker, tally)
                else:
                    items = await facts.entigraph(spec, chunks, asker, tally, seed)
                if spec.judge:
                    items = await _judge(spec, items, asker, tally)
            else:
                items = await _from_chunks(spec, inputs, asker, tally)
                if spec.judge:
                    items = await _judge(spec, items, asker, tally)
                if spec.task == "qa_from_docs" and spec.paraphrases:
                    items = items + await _paraphrase(spec, items, asker, tally)
        finally:
            await teacher.close()
    return items, tally, asker.counters


async def _answer(spec: SynthSpec, inputs: list[Record], asker: Asker, tally: Tally) -> list[Item]:
    system = tasks.render(spec.templates, "answer_system")
    prompts: list[list[dict[str, str]]] = []
    for record in inputs:
        if record["kind"] == "chat":
            turns = record["messages"]
            last_user = max(i for i, m in enumerate(turns) if m["role"] == "user")
            conversation = [dict(m) for m in turns[: last_user + 1]]
        else:
            conversation = [{"role": "user", "content": record["text"]}]
        if system and conversation[0]["role"] != "system":
            conversation = [{"role": "system", "content": system}, *conversation]
        prompts.append(conversation)
    replies = await asker.phase(f"synth answer ({spec.teacher.model})", prompts, want_json=False)
    items = []
    for record, conversation, reply in zip(inputs, prompts, replies, strict=True):
        if reply.text is None:
            tally.reject("answer", record, reply.error or "no reply", None)
        elif not reply.text.strip():
            tally.reject("answer", record, "empty reply", reply.text)
        else:
            items.append(
                Item(conversation[-1]["content"], reply.text.strip(), record, "answer", {"prompt": conversation})
            )
    return items


def _text_chunks(inputs: list[Record], tally: Tally) -> list[Record]:
    """The ``text`` records of ``inputs``; any other is rejected (the document tasks read chunks)."""
    for record in inputs:
        if record["kind"] != "text":
            tally.reject("generate", record, "not a text record: expected document chunks", None)
    return [r for r in inputs if r["kind"] == "text"]


async def _from_chunks(spec: SynthSpec, inputs: list[Record], asker: Asker, tally: Tally) -> list[Item]:
    chunks = _text_chunks(inputs, tally)
    jobs = [
        [
            {
                "role": "user",
                "content": tasks.render(
                    spec.templates, spec.task, chunk=r["text"], n=spec.pairs_per_chunk, source=where(r)
                ),
            }
        ]
        for r in chunks
    ]
    replies = await asker.phase(f"synth {spec.task}", jobs, want_json=True)
    items: list[Item] = []
    for record, reply in zip(chunks, replies, strict=True):
        if reply.text is None:
            tally.reject("generate", record, reply.error or "no reply", None)
            continue
        try:
            parsed, repairs = tasks.parse_items(spec.task, reply.text)
        except ValueError as exc:
            tally.reject("generate", record, f"unusable reply: {exc}", reply.text)
            continue
        tally.repaired += bool(repairs)
        for entry in parsed[: spec.pairs_per_chunk]:
            if spec.task == "qa_from_docs":
                items.append(Item(entry["question"], entry["answer"], record))
            else:
                user = entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")
                items.append(Item(user, entry["output"], record))
    return items


async def _judge(spec: SynthSpec, items: list[Item], asker: Asker, tally: Tally) -> list[Item]:
    jobs = [judge_messages(spec.templates, i.origin["text"], i.user, i.assistant) for i in items]
    replies = await asker.phase("judge", jobs, want_json=True)
    kept = []
    for item, reply in zip(items, replies, strict=True):
        if reply.text is None:
            tally.reject("judge", item.origin, reply.error or "no reply", None)
            continue
        try:
            score, reason = tasks.parse_judge(reply.text)
        except ValueError as exc:
            tally.reject("judge", item.origin, f"unusable judge reply: {exc}", reply.text)
            continue
        item.extra["judge_score"] = score
        if score < spec.judge_min_score:
            tally.reject("judge", item.origin, f"judge score {score} < {spec.judge_min_score}: {reason}", reply.text)
            continue
        kept.append(item)
    return kept


async def _paraphrase(spec: SynthSpec, items: list[Item], asker: Asker, tally: Tally) -> list[Item]:
    jobs = [
        [{"role": "user", "content": tasks.render(spec.templates, "paraphrase", question=i.user, k=spec.paraphrases)}]
        for i in items
    ]
    replies = await asker.phase("paraphrase", jobs, want_json=True)
    extra: list[Item] = []
    for item, reply in zip(items, replies, strict=True):
        if reply.text is None:
            tally.reject("paraphrase", item.origin, reply.error or "no reply", None)
            continue
        try:
            wordings = tasks.parse_paraphrases(reply.text)
        except ValueError as exc:
            tally.reject("paraphrase", item.origin, f"unusable reply: {exc}", reply.text)
            continue
        for wording in wordings[: spec.paraphrases]:
            extra.append(Item(wording, item.assistant, item.origin, "paraphrase", dict(item.extra)))
    return extra


# ---------------------------------------------------------------- filters and records


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def numbers(text: str) -> set[str]:
    """The numbers written in ``text`` (digits, separators dropped): a restated fact may not invent one."""
    return {re.sub(r"[,\s]", "", n).rstrip(".") for n in re.findall(r"\d[\d,.]*", text)}


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + 3]) for i in range(max(1, len(words) - 2))}


def to_records(items: list[Item], spec: SynthSpec, system_prompts: dict[str, str], tally: Tally) -> list[Record]:
    """Filter (length, grounding), deduplicate (exact, then near) and build canonical chat records.

    Near-duplicates are found by comparing word-trigram sets pairwise: quadratic, fine for the tens
    of thousands of questions a synth run makes.
    """
    limits = spec.filters
    records: list[Record] = []
    seen: set[str] = set()
    kept_shingles: list[set[tuple[str, ...]]] = []
    for item in items:
        reason = None
        if min(len(item.user), len(item.assistant)) < limits.min_chars:
            reason = "too short"
        elif max(len(item.user), len(item.assistant)) > limits.max_chars:
            reason = "too long"
        elif (
            limits.answer_in_chunk
            and item.origin["kind"] == "text"
            and normalize(item.assistant) not in normalize(item.origin["text"])
        ):
            reason = "answer not found in chunk"
        if (
            reason is None
            and item.kind in ("fact", "relation")
            and not numbers(item.assistant) <= numbers(item.origin["text"])
        ):
            reason = "number not in chunk"
        key = normalize(item.user) + "\x00" + normalize(item.assistant)
        if reason is None and key in seen:
            reason = "duplicate"
        shingles = trigrams(item.user)
        if reason is None and limits.near_duplicate is not None:
            for other in kept_shingles:
                if len(shingles & other) / max(len(shingles | other), 1) >= limits.near_duplicate:
                    reason = "near duplicate"
                    break
        if reason is not None:
            tally.filtered[reason] += 1
            continue
        seen.add(key)
        kept_shingles.append(shingles)
        records.append(_record(item, spec, system_prompts))
    return records


def _not_evaluated(recipe: Recipe, input_split: str, records: list[Record], tally: Tally) -> list[Record]:
    """``records`` without the questions that (nearly) repeat a question of an evaluation split: any split of
    the data stage but ``train``, the input split, the document splits and the rule-made training questions'."""
    from lmforge.data.questions import drop_eval_overlap

    data = recipe.data
    written = StageDir.open(recipe.run_path(), "data").manifest.get("outputs", {}).get("splits", {})
    skip = {"train", input_split, data.questions.split, *data.questions.from_splits}
    evaluation = [r for name, path in written.items() if name not in skip for r in read_records(path)]
    kept, dropped = drop_eval_overlap(records, evaluation, data.questions.overlap_threshold)
    if dropped:
        tally.filtered["repeats an evaluation question"] += dropped
    return kept


def _record(item: Item, spec: SynthSpec, system_prompts: dict[str, str]) -> Record:
    origin = item.origin
    domain = origin.get("domain")
    if item.kind == "answer":
        messages = [*item.extra["prompt"], {"role": "assistant", "content": item.assistant}]
    else:
        messages = [{"role": "user", "content": item.user}, {"role": "assistant", "content": item.assistant}]
    system = spec.system_prompt or system_prompts.get(domain or "")
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    meta = {
        "answer": item.assistant,
        "synth": {"task": spec.task, "kind": item.kind, "from": origin["id"], **item.extra},
    }
    meta["synth"].pop("prompt", None)
    return chat_record(messages, dict(origin.get("source") or {"path": "synth"}), domain, meta)


def _metrics(
    spec: SynthSpec, inputs: list[Record], records: list[Record], tally: Tally, counters: Counters, elapsed: float
) -> dict[str, Any]:
    teacher = spec.teacher
    cost = None
    if teacher.price_prompt_per_1m is not None or teacher.price_completion_per_1m is not None:
        cost = round(
            counters.prompt_tokens * (teacher.price_prompt_per_1m or 0) / 1e6
            + counters.completion_tokens * (teacher.price_completion_per_1m or 0) / 1e6,
            6,
        )
    return {
        "task": spec.task,
        "inputs": len(inputs),
        "records": len(records),
        "requests": {
            "sent": counters.sent,
            "cached": counters.cached,
            "failed": counters.failed,
            "retries": counters.retries,
            "retry_reasons": dict(counters.errors),
            "sent_per_s": round(counters.sent / max(elapsed, 1e-9), 3),
        },
        "json_mode": counters.json_mode if counters.json_mode is not None else teacher.json_mode != "off",
        "tokens": {"prompt": counters.prompt_tokens, "completion": counters.completion_tokens},
        "cost": cost,
        "replies_repaired": tally.repaired,
        "rejected": sum(tally.rejected.values()),
        "rejected_by_reason": dict(tally.rejected),
        "filtered": dict(tally.filtered),
        "seconds": round(elapsed, 2),
    }


def summary(result: SynthResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    m, r = result.metrics, result.metrics["requests"]
    return (
        f"[green]✔ synth[/green] {m['records']} records from {m['inputs']} inputs; "
        f"requests {r['sent']} sent, {r['cached']} cached, {r['retries']} retries; "
        f"{m['rejected']} rejected ({seconds:.0f}s; details in {result.stats_path})"
    )
