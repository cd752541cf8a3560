"""The ``eval`` stage: the base model and the tuned model answer the same held-out questions.

Outputs in ``runs/<run>/eval/``: ``predictions.jsonl`` (one line per question with every
variant's reply and scores) and ``summary.json``::

    {"sets": {"test": {"base": {"accuracy": 0.02, "f1": 0.1, "n": 120}, "tuned": {...}}, ...}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Recipe
from lmforge.errors import StageError
from lmforge.evaluate.metrics import contains_answer, token_f1
from lmforge.models import generate_replies, load_for_inference, resolve_model
from lmforge.records import Record, read_records
from lmforge.rundir import StageDir, atomic_write_json, atomic_write_jsonl, fingerprint_data, split_path, trained_model


@dataclass
class Question:
    """One evaluation item: the conversation up to the question, and the gold answer."""

    set_name: str
    id: str
    prompt: list[dict[str, str]]
    gold: str
    aliases: list[str]


@dataclass
class Variant:
    name: str
    model_dir: Path
    adapter_dir: Path | None


@dataclass
class EvalResult:
    summary: dict[str, Any]
    skipped: bool


def questions_from_records(set_name: str, records: list[Record]) -> list[Question]:
    """QA items from chat records: the prompt is everything before the last assistant turn.

    The gold answer is ``meta.answer`` when the record has one (a short exact answer), else the
    last assistant message.
    """
    questions = []
    for record in records:
        if record["kind"] != "chat":
            continue
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        meta = record.get("meta", {})
        questions.append(
            Question(
                set_name=set_name,
                id=record["id"],
                prompt=[dict(m) for m in messages[:last]],
                gold=str(meta.get("answer") or messages[last]["content"]),
                aliases=[str(a) for a in meta.get("aliases", [])],
            )
        )
    return questions


def variants_for(recipe: Recipe, base_dir: Path) -> list[Variant]:
    """The base model always; the tuned one when the run has a finished sft stage."""
    variants = [Variant("base", base_dir, None)]
    tuned = trained_model(recipe.run_path())
    if tuned is not None:
        variants.append(Variant("tuned", tuned[0], tuned[1]))
    elif "sft" in recipe.stages:
        raise StageError("eval expected the tuned model of the sft stage, but sft has not finished")
    return variants


def run(recipe: Recipe) -> EvalResult:
    """Evaluate every variant on every configured set; write predictions and the summary."""
    spec = recipe.eval
    stage = StageDir.open(recipe.run_path(), "eval")
    questions: list[Question] = []
    for set_name in spec.sets:
        records = list(read_records(split_path(recipe.run_path(), set_name, needed_by="eval")))
        questions += questions_from_records(set_name, records)[: spec.limit]
    if not questions:
        raise StageError(f"no chat questions in the eval sets {spec.sets}")
    base_dir = resolve_model(recipe.model.ref, recipe.model.revision)
    variants = variants_for(recipe, base_dir)
    config = {"eval": spec.model_dump(mode="json"), "model": recipe.model.model_dump(mode="json")}
    inputs = {
        "data": StageDir.open(recipe.run_path(), "data").fingerprint,
        "sft": StageDir.open(recipe.run_path(), "sft").fingerprint if len(variants) > 1 else None,
    }
    fingerprint = fingerprint_data([config, inputs])
    if stage.is_done(fingerprint):
        return EvalResult(summary=stage.manifest["metrics"], skipped=True)
    stage.start(fingerprint, config, inputs)

    replies: dict[str, list[str]] = {}
    for variant in variants:
        replies[variant.name] = answer_questions(variant, questions, spec.max_new_tokens, spec.batch_size, recipe)
    rows = score(questions, replies)
    summary = summarize(rows, [v.name for v in variants], spec.sets)
    atomic_write_jsonl(stage.path("predictions.jsonl"), rows)
    atomic_write_json(stage.path("summary.json"), summary)
    stage.finish(
        summary,
        outputs={"predictions": str(stage.path("predictions.jsonl")), "summary": str(stage.path("summary.json"))},
    )
    return EvalResult(summary=summary, skipped=False)


def answer_questions(
    variant: Variant, questions: list[Question], max_new_tokens: int, batch_size: int, recipe: Recipe
) -> list[str]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    model, tokenizer = load_for_inference(variant.model_dir, variant.adapter_dir, recipe.model.trust_remote_code)
    with Progress(
        TextColumn(f"eval: {variant.name:<6}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as progress:
        task = progress.add_task("generate", total=len(questions))
        replies = generate_replies(
            model,
            tokenizer,
            [q.prompt for q in questions],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=lambda n: progress.advance(task, n),
        )
    del model
    return replies


def score(questions: list[Question], replies: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per question with every variant's reply, correctness and token F1."""
    rows = []
    for index, question in enumerate(questions):
        answers = {}
        for name, variant_replies in replies.items():
            reply = variant_replies[index]
            answers[name] = {
                "reply": reply,
                "correct": contains_answer(reply, question.gold, question.aliases),
                "f1": round(token_f1(reply, question.gold), 4),
            }
        user_turns = [m["content"] for m in question.prompt if m["role"] == "user"]
        rows.append(
            {
                "set": question.set_name,
                "id": question.id,
                "question": user_turns[-1] if user_turns else "",
                "gold": question.gold,
                "answers": answers,
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], variant_names: list[str], set_names: list[str]) -> dict[str, Any]:
    """Per set and variant: accuracy (gold contained in the reply), mean token F1 and the count."""
    sets: dict[str, Any] = {}
    for set_name in set_names:
        subset = [row for row in rows if row["set"] == set_name]
        if not subset:
            continue
        sets[set_name] = {}
        for name in variant_names:
            scores = [row["answers"][name] for row in subset]
            sets[set_name][name] = {
                "accuracy": round(sum(s["correct"] for s in scores) / len(scores), 4),
                "f1": round(sum(s["f1"] for s in scores) / len(scores), 4),
                "n": len(scores),
            }
    return {"sets": sets, "variants": variant_names}


def render_table(summary: dict[str, Any], rows: list[dict[str, Any]] | None = None, examples: int = 3) -> Any:
    """A rich table: one line per set, accuracy and F1 of each variant side by side, and the change."""
    from rich.console import Group
    from rich.table import Table

    variants = summary["variants"]
    table = Table(title="lmforge eval: accuracy (gold answer in reply) and token F1", show_lines=False)
    table.add_column("set")
    table.add_column("n", justify="right")
    for name in variants:
        table.add_column(f"{name} acc", justify="right")
        table.add_column(f"{name} F1", justify="right")
    if "base" in variants and len(variants) > 1:
        table.add_column("Δ acc", justify="right")
    for set_name, scores in summary["sets"].items():
        cells = [set_name, str(next(iter(scores.values()))["n"])]
        for name in variants:
            cells += [f"{scores[name]['accuracy']:.1%}", f"{scores[name]['f1']:.3f}"]
        if "base" in variants and len(variants) > 1:
            delta = scores[variants[-1]]["accuracy"] - scores["base"]["accuracy"]
            color = "green" if delta > 0 else "red" if delta < 0 else "white"
            cells.append(f"[{color}]{delta:+.1%}[/{color}]")
        table.add_row(*cells)
    parts: list[Any] = [table]
    if rows and examples:
        sample = Table(title="example answers", show_lines=True)
        sample.add_column("set")
        sample.add_column("question")
        sample.add_column("gold")
        for name in variants:
            sample.add_column(name)
        for set_name in summary["sets"]:
            for row in [r for r in rows if r["set"] == set_name][:examples]:
                cells = [set_name, row["question"], row["gold"]]
                for name in variants:
                    answer = row["answers"][name]
                    mark = "[green]✔[/green]" if answer["correct"] else "[red]✘[/red]"
                    cells.append(f"{mark} {answer['reply'][:120]}")
                sample.add_row(*cells)
        parts.append(sample)
    return Group(*parts)
