"""The model card ``lmforge export`` writes next to the weights: ``README.md`` in the format model hubs read.

A YAML header (base model, licence, tags, the recipe's data sources, the eval scores as ``model-index``
results) and a body with the evidence a run holds: the recipe, the data accounting, the training settings
and losses, the eval table with its intervals, what the tuning broke, limitations, and how to run the files.
Everything comes from the run folder; nothing is fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmforge.records import read_json_lines
from lmforge.rundir import FinalModel, StageDir, is_run_dir, read_json
from lmforge.stages import TRAINING_STAGES

TRAINING_KEYS = ("method", "epochs", "lr", "batch_size", "max_length", "scheduler", "precision", "template")


def model_card(target: str, name: str, model_dir: Path, final: FinalModel | None, gguf_files: dict[str, Path]) -> str:
    """The card's text for an export of ``target`` (a run folder or a model reference) named ``name``."""
    run = Path(target) if is_run_dir(target) else None
    recipe = read_json(run / "recipe.json") if run and (run / "recipe.json").is_file() else {}
    summary_path = run / "eval" / "summary.json" if run else None
    summary = read_json(summary_path) if summary_path and summary_path.is_file() else None
    header = _header(name, recipe, model_dir, summary)
    parts = [f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n", f"# {name}\n"]
    parts.append(_summary(recipe, final))
    if run is not None:
        parts += [_data(run), _training(run, final), _evaluation(run, summary)]
    parts += [_usage(name, gguf_files), _limitations(run)]
    if recipe:
        shown = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
        parts.append(f"## Recipe\n\nThe resolved recipe this run executed:\n\n```yaml\n{shown}```\n")
    return "\n".join(part for part in parts if part)


def _header(name: str, recipe: dict[str, Any], model_dir: Path, summary: dict[str, Any] | None) -> dict[str, Any]:
    base = (recipe.get("model") or {}).get("ref") or str(model_dir)
    header: dict[str, Any] = {"base_model": base, "license": _licence(model_dir)}
    header["tags"] = ["lmforge", *[s for s in recipe.get("stages", []) if s in TRAINING_STAGES or s == "index"], "gguf"]
    sources = [Path(str(s.get("path", ""))).name for s in (recipe.get("data") or {}).get("sources", [])]
    if sources:
        header["datasets"] = sorted(set(sources))
    header["library_name"] = "transformers"
    header["pipeline_tag"] = "text-generation"
    results = _results(summary) if summary else []
    if results:
        header["model-index"] = [{"name": name, "results": results}]
    return header


def _licence(model_dir: Path) -> str:
    """The base model's licence from its own card's header, else ``other`` (the card says to check it)."""
    card = Path(model_dir) / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            found = (yaml.safe_load(text.split("---", 2)[1]) or {}).get("license")
            if isinstance(found, str) and found.strip():
                return found.strip()
    return "other"


def _results(summary: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for set_name, variants in summary["sets"].items():
        metric = summary.get("tasks", {}).get(set_name, {}).get("metric", "accuracy")
        for variant, scores in variants.items():
            value = scores.get("score", scores.get(metric))
            if isinstance(value, (int, float)):
                results.append(
                    {
                        "task": {"type": "text-generation", "name": f"{set_name} ({variant})"},
                        "dataset": {"name": set_name, "type": set_name},
                        "metrics": [{"type": metric, "value": round(float(value), 4), "name": f"{metric} ({variant})"}],
                    }
                )
    return results


def _summary(recipe: dict[str, Any], final: FinalModel | None) -> str:
    what = recipe.get("description") or "A model tuned with lmforge."
    made = f" The weights are the result of the `{final.stage}` stage." if final else ""
    return f"{what}{made} Made with [lmforge](https://pypi.org/project/lmforge/) from one YAML recipe (below).\n"


def _data(run: Path) -> str:
    stats_path = run / "data" / "stats.json"
    if not stats_path.is_file():
        return ""
    stats = read_json(stats_path)
    rows = "\n".join(f"| {split} | {count} |" for split, count in (stats.get("splits") or {}).items())
    totals = stats.get("totals") or {}
    kept = ", ".join(f"{key} {value}" for key, value in totals.items() if isinstance(value, int))
    table = f"| split | records |\n|---|---|\n{rows}\n"
    return f"## Data\n\nRecords read and kept: {kept or 'see data/stats.json'}.\n\n{table}"


def _training(run: Path, final: FinalModel | None) -> str:
    if final is None:
        return ""
    manifest = StageDir.open(run, final.stage).manifest
    config = (manifest.get("config") or {}).get(final.stage) or manifest.get("config") or {}
    metrics = manifest.get("metrics") or {}
    settings = {key: config.get(key) for key in TRAINING_KEYS if config.get(key) is not None}
    shown = {**settings, **{k: metrics.get(k) for k in ("steps", "examples", "final_loss", "seconds") if k in metrics}}
    rows = "\n".join(f"| {key} | {value} |" for key, value in shown.items())
    return f"## Training ({final.stage})\n\n| setting | value |\n|---|---|\n{rows}\n"


def _evaluation(run: Path, summary: dict[str, Any] | None) -> str:
    table = run / "eval" / "table.txt"
    if not table.is_file() or not summary:
        return ""
    level = f"{summary.get('confidence', 0.95):.0%}"
    questions = _questions(run)
    broke = [
        f"- {set_name}: {questions.get(str(row), str(row))[:120]}"
        for set_name, variants in (summary.get("regressions") or {}).items()
        for row in variants.get("tuned", [])
    ][:5]
    lost = "\n\nQuestions the base model answered and the tuned model does not (first 5):\n\n" + "\n".join(broke)
    return (
        f"## Evaluation\n\nHeld-out questions, base against tuned, with {level} bootstrap intervals "
        f"(the run's `eval/summary.json` and `eval/report.html` hold every answer):\n\n```text\n"
        f"{table.read_text(encoding='utf-8').rstrip()}\n```{lost if broke else ''}\n"
    )


def _questions(run: Path) -> dict[str, str]:
    """Question text by record id, from the run's ``eval/predictions.jsonl``."""
    path = run / "eval" / "predictions.jsonl"
    if not path.is_file():
        return {}
    return {str(row.get("id")): str(row.get("question", "")) for _, row in read_json_lines(path)}


def _usage(name: str, gguf_files: dict[str, Path]) -> str:
    gguf = next((path.name for path in gguf_files.values()), f"{name}.q8_0.gguf")
    return (
        "## How to run it\n\n```bash\n"
        f"llama-cli -m {gguf} -cnv                       # llama.cpp (chat template inside the GGUF)\n"
        f"ollama create {name} -f Modelfile && ollama run {name}\n"
        "lmforge serve RUN                              # OpenAI-compatible API on 127.0.0.1:8000\n```\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("hf")\nmodel = AutoModelForCausalLM.from_pretrained("hf")\n```\n'
    )


def _limitations(run: Path | None) -> str:
    notes = [
        "Scores are measured on the held-out questions of this run only; a question outside its documents "
        "may get a confident wrong answer.",
        "The licence is the base model's; `other` means lmforge could not read it from the base model's card.",
    ]
    if run is not None and (run / "index").is_dir():
        notes.append("The `+rag` variants need the run's index (`lmforge serve RUN --rag`); the weights alone are "
                     "the `tuned` rows.")  # fmt: skip
    return "## Limitations\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
