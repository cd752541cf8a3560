"""The ``eval`` stage: every variant (the base model always among them) answers the same held-out sets.

setup (sets -> task items, variants -> local weights) -> answer (batched generation, or
log-likelihoods) -> score (per question, per task) -> judge (optional) -> statistics (bootstrap
intervals, paired differences to base, regressions) -> save. Outputs in ``runs/<run>/eval/``:

* ``predictions.jsonl``: one line per question: set, task, question, gold, every variant's answer
  and scores (and the retrieved passages when a variant used retrieval);
* ``summary.json``::

    {"sets": {"test": {"base": {"accuracy": 0.02, "f1": 0.1, "n": 120, "score": 0.02, "ci": [...]},
                       "tuned": {..., "delta": 0.6, "delta_ci": [0.5, 0.7], "regressions": 1, ...}}},
     "tasks": {"test": {"task": "qa", "metric": "accuracy", "higher_is_better": true}},
     "variants": ["base", "tuned"], "regressions": {"test": {"tuned": ["<id>", ...]}}, ...}

* ``report.html`` (see :mod:`lmforge.evaluate.report`);
* ``answers/<variant>.json``: each variant's raw answers, reused by the next run when the
  variant's weights, the questions and the decoding settings are unchanged (after a new sft run
  only the tuned model answers again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.distributed import is_leader
from lmforge.errors import StageError
from lmforge.evaluate.stats import paired_difference, score_interval
from lmforge.evaluate.table import render_table, summary_line, write_table
from lmforge.evaluate.tasks import Item, Task, task_for
from lmforge.evaluate.variants import (
    Variant,
    load_variant,
    rag_prompts,
    resolve_variants,
    retrieved_passages,
    route_threshold,
)
from lmforge.log import stage_log
from lmforge.models import generate_replies
from lmforge.rag.route import routed
from lmforge.records import invented_citation, read_json_lines, read_records
from lmforge.redact import redact_values
from lmforge.rundir import (
    StageDir,
    atomic_write_json,
    atomic_write_jsonl,
    fingerprint_data,
    library_versions,
    read_json,
    split_path,
)


@dataclass
class EvalSet:
    """One set of the recipe: its task and its items."""

    name: str
    task: Task
    items: list[Item]
    passages: dict[str, list[dict[str, Any]]] | None = None
    """Retrieved passages per record id, when a variant uses retrieval."""
    relevance: dict[str, float] = field(default_factory=dict)
    """Each question's relevance to the index (cosine to the nearest chunk), for routed variants."""
    route_threshold: float | None = None
    """The index's routing threshold, when a variant routes."""

    def shown(self, variant: Variant, item_id: str) -> list[dict[str, Any]]:
        """The passages ``variant``'s prompt holds for the question ``item_id`` (none without retrieval)."""
        if not variant.rag or self.passages is None:
            return []
        passages = self.passages.get(item_id, [])
        return routed(passages, self.relevance.get(item_id), self.route_threshold) if variant.route else passages


@dataclass
class EvalResult:
    summary: dict[str, Any]
    skipped: bool
    report_path: Path | None = None


def load_sets(recipe: Recipe, with_passages: bool, routed_variants: bool = False) -> list[EvalSet]:
    """Every configured set as task items (at most ``eval.limit`` each), with the retrieved passages
    (and the routing threshold) when a variant needs them."""
    threshold = route_threshold(recipe.run_path(), "eval (a routed variant)") if routed_variants else None
    eval_sets = []
    for set_name in recipe.eval.sets:
        path = split_path(recipe.run_path(), set_name, needed_by="eval")
        task = task_for(recipe.eval.tasks.get(set_name, "qa"))
        records = list(read_records(path))[: recipe.eval.limit]
        items = task.items(set_name, records, path)
        if not items:
            raise StageError(f"the eval set {set_name!r} ({path}) is empty; nothing to evaluate")
        passages, relevance = None, {}
        if with_passages and task.mode != "perplexity":
            passages, relevance = retrieved_passages(recipe.run_path(), set_name, needed_by="eval (a rag variant)")
            missing = [item.id for item in items if item.id not in passages]
            if missing:
                raise StageError(
                    f"no retrieved passages for {len(missing)} question(s) of the set {set_name!r}, e.g. {missing[0]}; "
                    "the index stage's retrieved file is older than the data: re-run the index stage"
                )
            if threshold is not None and any(item.id not in relevance for item in items):
                raise StageError(
                    f"the index stage's retrieved file for {set_name!r} has no relevance scores (written by an older "
                    "lmforge); re-run the index stage for routed variants"
                )
        eval_sets.append(EvalSet(set_name, task, items, passages, relevance, threshold))
    return eval_sets


def run(recipe: Recipe) -> EvalResult:
    """Evaluate every variant on every configured set; write predictions, the summary and the report."""
    spec = recipe.eval
    run_path = recipe.run_path()
    stage = StageDir.open(run_path, "eval")
    variants = resolve_variants(recipe)
    eval_sets = load_sets(recipe, any(v.rag for v in variants), any(v.route for v in variants))
    # ``examples`` only changes what is printed: not part of the fingerprint.
    settings = redact_values(spec.model_dump(mode="json", exclude={"examples"}))  # a judge URL's credentials
    config = {"eval": settings, "model": recipe.model.model_dump(mode="json"), "seed": recipe.seed}
    inputs = {"data": StageDir.open(run_path, "data").fingerprint, "variants": {v.name: v.identity for v in variants}}
    fingerprint = fingerprint_data([config, inputs])
    if stage.is_done(fingerprint):
        report = stage.path("report.html")
        return EvalResult(stage.manifest["metrics"], True, report if report.is_file() else None)
    stage.start(fingerprint, config, inputs)
    stage_log("eval").info(f"{len(variants)} variants ({', '.join(v.name for v in variants)}) on {len(eval_sets)} sets")

    outputs, seconds = answer_all(variants, eval_sets, recipe, stage)
    if not is_leader():  # the answers were generated together and gathered; scoring and writing are the leader's
        return EvalResult({}, False, None)
    rows = score_rows(eval_sets, variants, outputs)
    if spec.judge is not None:
        from lmforge.evaluate.judge import judge_rows

        judge_rows(spec.judge, rows, [v.name for v in variants], _judged_sets(spec.judge.sets, eval_sets))
    summary = summarize(rows, eval_sets, variants, spec.bootstrap, spec.confidence, recipe.seed)
    summary["seconds"] = seconds  # per variant: loading, generation and scoring
    atomic_write_jsonl(stage.path("predictions.jsonl"), rows)
    atomic_write_json(stage.path("summary.json"), summary)
    written = {"predictions": str(stage.path("predictions.jsonl")), "summary": str(stage.path("summary.json"))}
    report_path = None
    if spec.report:
        from lmforge.evaluate.report import write_report

        report_path = write_report(run_path)
        written["report"] = str(report_path)
    written["table"] = str(write_table(stage.path("table.txt"), summary, rows, spec.examples))
    stage.finish(summary, outputs=written)
    return EvalResult(summary, False, report_path)


# ---------------------------------------------------------------- answering


def answer_all(
    variants: list[Variant], eval_sets: list[EvalSet], recipe: Recipe, stage: StageDir
) -> tuple[dict[str, dict[str, list[Any]]], dict[str, float]]:
    """Every variant's outputs (reused from the last run when nothing they depend on changed),
    and the seconds each variant took."""
    outputs, seconds = {}, {}
    for variant in variants:
        started = time.perf_counter()
        key = answers_key(variant, eval_sets, recipe)
        cached = cached_answers(stage, variant.name, key)
        if cached is not None:
            stage_log("eval").info(
                f"{variant.name}: same weights, questions and settings as the last run; answers reused"
            )
            outputs[variant.name] = cached
        else:
            outputs[variant.name] = answer_sets(variant, eval_sets, recipe)
            saved = {"key": key, "outputs": outputs[variant.name]}
            atomic_write_json(stage.path("answers", f"{variant.name}.json"), saved)
        seconds[variant.name] = round(time.perf_counter() - started, 1)
    return outputs, seconds


def eval_dtype(precision: str) -> Any:
    """The weights' dtype for ``eval.precision`` (None: fp32)."""
    import torch

    from lmforge.engine.compute import use_bf16

    return torch.bfloat16 if use_bf16(precision) else None


def answer_sets(variant: Variant, eval_sets: list[EvalSet], recipe: Recipe) -> dict[str, list[Any]]:
    """One variant's outputs per set: replies (generate), choice scores (choice) or (nll, tokens)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lmforge.evaluate.likelihood import build_pairs, continuation_logprobs, item_outputs

    spec = recipe.eval
    model, tokenizer = load_variant(variant, recipe.model.trust_remote_code, eval_dtype(spec.precision))
    if not tokenizer.chat_template:  # a base model without one is asked in the format the run trained
        tokenizer.chat_template = _trained_template(recipe)
    outputs: dict[str, list[Any]] = {}
    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(TextColumn(f"eval: {variant.name:<10}" + " {task.description}"), *columns, transient=True) as bar:
        generate = [s for s in eval_sets if s.task.mode == "generate"]
        prompts = [prompt for s in generate for prompt in _prompts(s, variant)]
        if prompts:
            task = bar.add_task("generate", total=len(prompts))
            replies = generate_replies(
                model,
                tokenizer,
                prompts,
                max_new_tokens=spec.max_new_tokens,
                batch_size=spec.batch_size,
                on_batch=lambda n: bar.advance(task, n),
                data_parallel=True,
            )
            for eval_set in generate:
                outputs[eval_set.name], replies = replies[: len(eval_set.items)], replies[len(eval_set.items) :]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for eval_set in [s for s in eval_sets if s.task.mode != "generate"]:
            items = eval_set.items
            if variant.rag and eval_set.passages is not None:
                prompts = _prompts(eval_set, variant)
                items = [replace(item, prompt=prompt) for item, prompt in zip(items, prompts, strict=True)]
            pairs, owners = build_pairs(tokenizer, items, eval_set.task.mode, spec.max_length)
            progress = bar.add_task(f"{eval_set.name} ({eval_set.task.mode})", total=len(pairs))
            scored = continuation_logprobs(
                model, pairs, pad_id, spec.batch_size, lambda n, progress=progress: bar.advance(progress, n)
            )
            outputs[eval_set.name] = item_outputs(items, eval_set.task.mode, owners, scored)
    del model
    return outputs


def _trained_template(recipe: Recipe) -> str | None:
    """The chat template of the run's trained model (sft.template alpaca / domain_tag on a base model), if any."""
    from lmforge.models import load_tokenizer, tokenizer_folder
    from lmforge.rundir import final_model

    found = final_model(recipe.run_path())
    if found is None:
        return None
    folder = tokenizer_folder(found.model_dir, found.adapter_dir)
    return load_tokenizer(folder, trust_remote_code=recipe.model.trust_remote_code).chat_template


def answers_key(variant: Variant, eval_sets: list[EvalSet], recipe: Recipe) -> str:
    """What a variant's raw answers depend on: its weights, the questions and the decoding settings.

    A re-run after a new sft run re-answers with the tuned model only: the base model's answers
    (``eval/answers/base.json``) are reused when this key is unchanged.
    """
    spec = recipe.eval
    questions = [(s.name, s.task.name, [item.id for item in s.items]) for s in eval_sets]
    settings = [spec.max_new_tokens, spec.batch_size, spec.max_length, recipe.model.trust_remote_code]
    versions = {name: version for name, version in library_versions().items() if name in ("torch", "transformers")}
    routing = [variant.route, [s.route_threshold for s in eval_sets]] if variant.route else []
    return fingerprint_data([variant.identity, variant.rag, questions, settings, versions, *routing])


def cached_answers(stage: StageDir, name: str, key: str) -> dict[str, list[Any]] | None:
    """A variant's answers from an earlier run with the same :func:`answers_key`, or None."""
    path = stage.path("answers", f"{name}.json")
    if not path.is_file():
        return None
    try:
        saved = read_json(path)
    except ValueError:
        return None
    return saved["outputs"] if isinstance(saved, dict) and saved.get("key") == key else None


def _judged_sets(names: list[str] | None, eval_sets: list[EvalSet]) -> list[str]:
    if names:
        return names
    return [s.name for s in eval_sets if s.task.name in ("qa", "freeform")]


def _prompts(eval_set: EvalSet, variant: Variant) -> list[list[dict[str, str]]]:
    prompts = [item.prompt for item in eval_set.items]
    if not variant.rag or eval_set.passages is None:
        return prompts
    ids = [item.id for item in eval_set.items]
    shown = {item_id: eval_set.shown(variant, item_id) for item_id in ids}
    return rag_prompts(prompts, ids, shown, where=f"variant {variant.name!r}, set {eval_set.name!r}")


# ---------------------------------------------------------------- scoring and statistics


def score_rows(
    eval_sets: list[EvalSet], variants: list[Variant], outputs: dict[str, dict[str, list[Any]]]
) -> list[dict[str, Any]]:
    """One row per question with every variant's answer and scores; with retrieval, the passages
    and, per ``rag`` variant, the ids of the passages its reply cites (``[n]``) and whether a routed
    variant retrieved. A reply that cites a passage number its prompt did not hold (any number when
    the prompt held no passages) is marked ``invented_citation``."""
    rows = []
    for eval_set in eval_sets:
        for index, item in enumerate(eval_set.items):
            answers = {v.name: eval_set.task.score(item, outputs[v.name][eval_set.name][index]) for v in variants}
            for variant in variants:
                reply = answers[variant.name].get("reply")
                if isinstance(reply, str):
                    shown = eval_set.shown(variant, item.id)
                    answers[variant.name]["invented_citation"] = invented_citation(reply, len(shown))
                    if variant.route:
                        answers[variant.name]["retrieved"] = bool(shown)
            row: dict[str, Any] = {
                "set": eval_set.name,
                "task": eval_set.task.name,
                "id": item.id,
                "question": item.question,
                "gold": item.gold,
                "answers": answers,
            }
            if eval_set.passages is not None:
                row["passages"] = eval_set.passages.get(item.id, [])
                for variant in [v for v in variants if v.rag]:
                    shown = eval_set.shown(variant, item.id)
                    answers[variant.name]["cited"] = _cited_ids(answers[variant.name].get("reply", ""), shown)
            rows.append(row)
    return rows


def _cited_ids(reply: str, passages: list[dict[str, Any]]) -> list[str]:
    from lmforge.records import cited_passages

    return [str(passage.get("id", "")) for passage in cited_passages(reply, passages)]


def summarize(
    rows: list[dict[str, Any]],
    eval_sets: list[EvalSet],
    variants: list[Variant],
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per set and variant: the task's metrics, the headline score with its interval, and for every
    variant but base the paired difference to base with its interval and the regressions."""
    names = [v.name for v in variants]
    summary: dict[str, Any] = {
        "sets": {},
        "tasks": {},
        "variants": names,
        "labels": {v.name: v.label for v in variants},
        "regressions": {},
        "bootstrap": resamples,
        "confidence": confidence,
    }
    for eval_set in eval_sets:
        task = eval_set.task
        set_rows = [row for row in rows if row["set"] == eval_set.name]
        summary["tasks"][eval_set.name] = {
            "task": task.name,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
        }
        base_scores = [row["answers"]["base"] for row in set_rows]
        base_sample = task.sample(base_scores)
        entries: dict[str, Any] = {}
        for name in names:
            scores = [row["answers"][name] for row in set_rows]
            sample = task.sample(scores)
            entry = {key: _rounded(value) for key, value in task.aggregate(eval_set.items, scores).items()}
            entry.update(n=len(scores), score=_rounded(sample.value()))
            if any("invented_citation" in score for score in scores):
                entry["invented_citations"] = sum(bool(score.get("invented_citation")) for score in scores)
            if any("retrieved" in score for score in scores):
                entry["retrieved"] = sum(bool(score.get("retrieved")) for score in scores)
            entry["ci"] = [_rounded(x) for x in score_interval(sample, resamples, confidence, seed)]
            if name != "base":
                diff = paired_difference(sample, base_sample, resamples, confidence, seed)
                entry.update(delta=_rounded(diff["delta"]), delta_ci=[_rounded(x) for x in diff["ci"]])
                entry["p_value"] = _rounded(diff["p_value"])
                changed = _changes(set_rows, name, task.binary)
                if changed is not None:
                    broke, fixed = changed
                    entry.update(regressions=len(broke), improvements=len(fixed))
                    summary["regressions"].setdefault(eval_set.name, {})[name] = broke
                if any("judge" in score for score in scores):
                    entry["judge"] = _judge_summary([score.get("judge") for score in scores])
            other = next((v.compare_to for v in variants if v.name == name), None)
            if other is not None:
                other_sample = task.sample([row["answers"][other] for row in set_rows])
                diff = paired_difference(sample, other_sample, resamples, confidence, seed)
                versus = {"delta": diff["delta"], "delta_ci": list(diff["ci"]), "p_value": diff["p_value"]}
                if task.binary:
                    broke, fixed = _changes(set_rows, name, True, against=other)  # type: ignore[misc]
                    versus.update(regressions=len(broke), improvements=len(fixed))
                entry["vs"] = {other: _rounded(versus)}
            entries[name] = entry
        summary["sets"][eval_set.name] = entries
    return summary


def _changes(
    set_rows: list[dict[str, Any]], name: str, binary: bool, against: str = "base"
) -> tuple[list[str], list[str]] | None:
    """(ids ``against`` (the base model) got right and ``name`` got wrong, ids the other way round).

    For tasks without a right/wrong answer (free-form text), the judge's verdicts (against base) decide
    when there are any.
    """
    if binary:
        broke = [r["id"] for r in set_rows if r["answers"][against]["correct"] and not r["answers"][name]["correct"]]
        fixed = [r["id"] for r in set_rows if r["answers"][name]["correct"] and not r["answers"][against]["correct"]]
        return broke, fixed
    verdicts = [(r["id"], r["answers"][name].get("judge", {}).get("verdict")) for r in set_rows]
    if not any(verdict for _, verdict in verdicts):
        return None
    return [i for i, v in verdicts if v == "loss"], [i for i, v in verdicts if v == "win"]


def _judge_summary(judgements: list[dict[str, Any] | None]) -> dict[str, Any]:
    verdicts = [j["verdict"] for j in judgements if j]
    n = max(len(verdicts), 1)
    wins, ties, losses = (verdicts.count(v) for v in ("win", "tie", "loss"))
    return {
        "win": round(wins / n, 4),
        "tie": round(ties / n, 4),
        "loss": round(losses / n, 4),
        "score": round((wins + ties / 2) / n, 4),
        "n": len(verdicts),
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(inner) for key, inner in value.items()}
    return value


def summary(result: EvalResult, seconds: float) -> str:
    """The line the pipeline prints after the stage."""
    report = f"; report {result.report_path}" if result.report_path else ""
    return f"[green]✔ eval[/green]  {summary_line(result.summary)} ({seconds:.0f}s{report})"


def show(recipe: Recipe, result: EvalResult, console: Any) -> None:
    """Print the side-by-side table (the stage wrote it as ``eval/table.txt`` too)."""
    rows = [row for _, row in read_json_lines(recipe.run_path() / "eval" / "predictions.jsonl")]
    console.print(render_table(result.summary, rows, recipe.eval.examples))
