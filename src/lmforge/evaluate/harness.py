"""An adapter for EleutherAI's lm-evaluation-harness: evaluate a run's model with lm-eval, offline.

:func:`write_tasks` turns a run's eval sets into lm-eval task files (YAML + a local JSON Lines
file + the scoring functions, in ``runs/<run>/eval/harness/tasks/``), so lm-eval reads no hub
dataset; :func:`model_args` gives lm-eval's ``hf`` model the run's local folders (base weights
and LoRA adapter, the adapter's tokenizer with its chat template). :func:`run_harness` does both
and calls ``lm_eval.simple_evaluate``; ``lmforge harness RUN`` is its command.

The prompt of every document is already rendered with the run's chat template (system prompt
included), exactly as the eval stage prompts the model, so lm-eval runs *without*
``--apply_chat_template`` and its numbers are comparable with ``eval/summary.json``. Standard
benchmarks (``--tasks hellaswag``) go through the same model arguments; they need their datasets
in the local Hugging Face cache when offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lmforge.errors import StageError
from lmforge.evaluate.tasks import task_for
from lmforge.models import load_tokenizer
from lmforge.records import read_records
from lmforge.rundir import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    final_model,
    read_json,
    split_path,
)

HARNESS_INSTALL = "pip install 'lmforge[harness]' (or pip install lm-eval)"

# Scoring functions lm-eval calls for generated answers: lmforge's own metrics, so the numbers agree.
UTILS_PY = '''"""Written by lmforge.evaluate.harness: lm-eval scores generated answers with lmforge's metrics."""

from lmforge.evaluate.fields import score_reply
from lmforge.evaluate.metrics import contains_answer, exact_match, rouge_l, token_f1


def process_qa(doc, results):
    reply = results[0].strip()
    return {
        "accuracy": float(contains_answer(reply, doc["answer"], doc["aliases"])),
        "exact": float(exact_match(reply, doc["answer"], doc["aliases"])),
        "f1": token_f1(reply, doc["answer"]),
    }


def process_freeform(doc, results):
    return {"rouge_l": rouge_l(results[0].strip(), doc["answer"])}


def process_extraction(doc, results):
    scored = score_reply(results[0], doc["fields"])
    return {"field_accuracy": scored.field_accuracy, "valid_json": float(scored.valid_json)}
'''

METRICS = {
    "qa": [("accuracy", True), ("exact", True), ("f1", True)],
    "freeform": [("rouge_l", True)],
    "extraction": [("field_accuracy", True), ("valid_json", True)],
}


def task_name(run_name: str, set_name: str) -> str:
    """lm-eval task name of a run's eval set: ``lmforge_<run>_<set>`` (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"lmforge_{run_name}_{set_name}")


def run_recipe_json(run_path: Path) -> dict[str, Any]:
    path = run_path / "recipe.json"
    if not path.is_file():
        raise StageError(f"{run_path} is not a run directory (no recipe.json); pass runs/NAME of a run that ran")
    return read_json(path)


def write_tasks(
    run_path: str | Path, sets: list[str] | None = None, out_dir: str | Path | None = None, variant: str = "tuned"
) -> list[str]:
    """Write lm-eval task files for a run's eval sets; returns the task names.

    Files go to ``out_dir`` (default ``runs/<run>/eval/harness/tasks``): ``<task>.yaml``,
    ``<task>.jsonl`` (the documents, prompts rendered with the chat template of the variant's
    tokenizer) and ``utils.py``.
    """
    run_path = Path(run_path)
    recipe = run_recipe_json(run_path)
    eval_spec = recipe.get("eval", {})
    sets = sets or list(eval_spec.get("sets", []))
    out = Path(out_dir) if out_dir else run_path / "eval" / "harness" / "tasks"
    trust_remote_code = recipe.get("model", {}).get("trust_remote_code", False)
    if variant == "tuned" and final_model(run_path, kinds=("causal",)) is None:
        variant = "base"  # a run without a tuned model: its prompts are rendered with the base model's template
    tokenizer = load_tokenizer(model_args(run_path, variant)["tokenizer"], trust_remote_code)
    names = []
    for set_name in sets:
        kind = eval_spec.get("tasks", {}).get(set_name, "qa")
        path = split_path(run_path, set_name, needed_by="harness")
        items = task_for(kind).items(set_name, list(read_records(path)), path)
        name = task_name(run_path.name, set_name)
        docs = [_document(kind, item, tokenizer) for item in items]
        atomic_write_jsonl(out / f"{name}.jsonl", docs)
        atomic_write_text(out / f"{name}.yaml", _task_yaml(name, kind, out / f"{name}.jsonl", eval_spec))
        names.append(name)
    atomic_write_text(out / "utils.py", UTILS_PY)
    return names


def _document(kind: str, item: Any, tokenizer: Any) -> dict[str, Any]:
    if kind == "perplexity":
        # lm-eval's rolling log-likelihood takes no prompt: a chat record's answer is scored on its own.
        return {"id": item.id, "text": item.gold}
    prompt = tokenizer.apply_chat_template(item.prompt, add_generation_prompt=True, tokenize=False)
    doc = {"id": item.id, "prompt": prompt, "answer": item.gold, "aliases": item.aliases}
    if kind == "choice":
        doc.update(choices=item.choices, label=item.gold_index)
    if kind == "extraction":
        doc["fields"] = item.gold_fields
    return doc


def _task_yaml(name: str, kind: str, data_file: Path, eval_spec: dict[str, Any]) -> str:
    lines = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file.resolve()))}",
        "test_split: test",
    ]
    if kind == "choice":
        lines += [
            "output_type: multiple_choice",
            'doc_to_text: "{{prompt}}"',
            "doc_to_choice: choices",
            "doc_to_target: label",
            'target_delimiter: ""',
            "metric_list:",
            "  - {metric: acc, aggregation: mean, higher_is_better: true}",
            "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
        ]
    elif kind == "perplexity":
        lines += [
            "output_type: loglikelihood_rolling",
            'doc_to_text: ""',
            'doc_to_target: "{{text}}"',
            "metric_list:",
            "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}",
            "  - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}",
            "  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}",
        ]
    else:
        max_new_tokens = int(eval_spec.get("max_new_tokens", 48))
        lines += [
            "output_type: generate_until",
            'doc_to_text: "{{prompt}}"',
            'doc_to_target: "{{answer}}"',
            'target_delimiter: ""',
            "generation_kwargs:",
            "  until: []",
            "  do_sample: false",
            f"  max_gen_toks: {max_new_tokens}",
            f"process_results: !function utils.process_{kind}",
            "metric_list:",
        ]
        lines += [
            f"  - {{metric: {m}, aggregation: mean, higher_is_better: {str(h).lower()}}}" for m, h in METRICS[kind]
        ]
    lines += ["metadata:", "  version: 1.0", ""]
    return "\n".join(lines)


def model_args(run_path: str | Path, variant: str = "tuned") -> dict[str, str]:
    """lm-eval ``hf`` model arguments for a run's ``tuned`` or ``base`` model (local folders only)."""
    from lmforge.models import resolve_model

    run_path = Path(run_path)
    recipe = run_recipe_json(run_path)
    if variant == "tuned":
        tuned = final_model(run_path, kinds=("causal",))
        if tuned is None:
            raise StageError(f"{run_path} has no finished cpt or sft stage; evaluate the base model: --variant base")
        model_dir, adapter_dir = tuned.pair
        args = {"pretrained": str(model_dir), "tokenizer": str(adapter_dir or model_dir)}
        if adapter_dir is not None:
            args["peft"] = str(adapter_dir)
    elif variant == "base":
        model = recipe.get("model", {})
        base_dir = resolve_model(model.get("ref", "smollm2-135m-instruct"), model.get("revision"))
        args = {"pretrained": str(base_dir), "tokenizer": str(base_dir)}
    else:
        raise StageError(f"--variant must be 'tuned' or 'base', got {variant!r}")
    args["dtype"] = "float32"
    return args


def run_harness(
    run_path: str | Path,
    variant: str = "tuned",
    sets: list[str] | None = None,
    extra_tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Evaluate a run's model with lm-eval on its own sets (and any ``extra_tasks``); returns the metrics.

    Writes ``runs/<run>/eval/harness/results-<variant>.json``.
    """
    # Local task files only: lm-eval and datasets must not reach for the hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise StageError(f"the lm-eval adapter needs lm-evaluation-harness: {HARNESS_INSTALL}") from None
    run_path = Path(run_path)
    names = write_tasks(run_path, sets, variant=variant)
    tasks_dir = run_path / "eval" / "harness" / "tasks"
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=bool(extra_tasks))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args(run_path, variant),
        tasks=names + list(extra_tasks or []),
        task_manager=manager,
        limit=limit,
        batch_size=batch_size,
        device="cuda" if _cuda() else "cpu",
        log_samples=False,
        bootstrap_iters=0,
    )
    if results is None:
        raise StageError("lm-eval returned no results")
    metrics = {}
    for task, scores in results["results"].items():
        # lm-eval keys look like "accuracy,none" (metric, filter); keep the numbers, drop the stderr entries.
        numbers = {k.split(",")[0]: v for k, v in scores.items() if isinstance(v, (int, float)) and "_stderr" not in k}
        numbers["n"] = numbers.pop("sample_len", results.get("n-samples", {}).get(task, {}).get("effective"))
        metrics[task] = numbers
    atomic_write_json(run_path / "eval" / "harness" / f"results-{variant}.json", {"variant": variant, **metrics})
    return metrics


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def command_line(run_path: str | Path, variant: str = "tuned") -> str:
    """The equivalent ``lm-eval run`` command, for people who drive lm-eval themselves."""
    run_path = Path(run_path)
    args = " ".join(f"{key}={value}" for key, value in model_args(run_path, variant).items())
    names = " ".join(task_name(run_path.name, s) for s in run_recipe_json(run_path).get("eval", {}).get("sets", []))
    return (
        f"HF_DATASETS_OFFLINE=1 lm-eval run --model hf --model_args {args} "
        f"--include_path {run_path / 'eval' / 'harness' / 'tasks'} --tasks {names}"
    )
