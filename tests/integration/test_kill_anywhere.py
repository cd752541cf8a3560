"""Kill anywhere: a pipeline SIGKILLed at a random moment and re-run ends exactly where an
uninterrupted run ends.

A *moment* is any file put into place (every artifact, manifest and checkpoint is written to a
temporary name and renamed: ``os.replace`` / ``os.rename``) or any training micro-step. The
uninterrupted run counts its moments; the killed run dies (SIGKILL: no clean-up, no atexit, like a
power cut) at one drawn from a seeded RNG; then the same command runs again without the killer.
Moments also fall *inside* weight and checkpoint writes (``safetensors`` files, ``torch.save`` of the
optimizer state): the file is left half written, then the process dies. Its outputs must equal the
uninterrupted run's: every JSON Lines file byte for byte (training logs: the logged losses), the JSON
results (summary, stats; without what measures time or memory), every weight within 1e-5. Stages
covered: data, index (with RAFT), cpt, sft with packing, sft with distillation, seq2seq, synth (local
teacher), dpo, eval, export.

Moments are drawn afresh at every run (the seed is printed; ``LMFORGE_KILL_SEED=N`` replays one). The
default tier kills three scenarios once each and an export; ``pytest -m slow`` the others and many more
moments.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_tiny_llama, build_tiny_tokenizer, qa_rows, write_jsonl
from safetensors.torch import load_file
from test_rag_pipeline import rag_recipe as rag_recipe  # a fixture
from test_train_models import letters, save_model
from test_train_stages import tiny_t5_dir as tiny_t5_dir  # a fixture

pytestmark = pytest.mark.integration

# Imported at start-up by the lmforge process (PYTHONPATH): counts moments, and SIGKILLs the process
# at moment KILL_AT_MOMENT; MOMENTS_FILE gets the count of an uninterrupted run at exit.
HOOK = """
import atexit, os, signal

_target = int(os.environ.get("KILL_AT_MOMENT", "0"))
_count_file = os.environ.get("MOMENTS_FILE")
_kinds = []

def _moment(kind):
    _kinds.append(kind)
    if len(_kinds) == _target:
        os.kill(os.getpid(), signal.SIGKILL)

def _counting(real, kind):
    def wrapped(*args, **kwargs):
        _moment(kind)
        return real(*args, **kwargs)
    return wrapped

def _torn(real, path_at):
    # A write the process dies inside: at the drawn moment the file is written, cut to half, then SIGKILL.
    def wrapped(*args, **kwargs):
        _kinds.append("torn")
        if len(_kinds) != _target:
            return real(*args, **kwargs)
        result = real(*args, **kwargs)
        path = path_at(args, kwargs)
        if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
            size = os.path.getsize(path)
            with open(path, "r+b") as handle:
                handle.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

if _target or _count_file:
    os.replace, os.rename = _counting(os.replace, "rename"), _counting(os.rename, "rename")
    try:
        from transformers import Trainer
        Trainer.training_step = _counting(Trainer.training_step, "step")
    except ImportError:
        pass
    try:  # moments inside weight and checkpoint writes (safetensors files, torch.save of optimizer states)
        import safetensors.torch, torch
        def _second(name):
            return lambda a, k: a[1] if len(a) > 1 else k.get(name)
        safetensors.torch.save_file = _torn(safetensors.torch.save_file, _second("filename"))
        torch.save = _torn(torch.save, _second("f"))
    except ImportError:
        pass
    if _count_file:
        atexit.register(lambda: open(_count_file, "w").write(" ".join(_kinds)))
"""


def run(command: list[str], hooks: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("KILL_AT_MOMENT", "MOMENTS_FILE")}
    environment.update(PYTHONPATH=str(hooks), **env)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


def lmforge(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge", *args]


def outputs(folder: Path) -> dict[str, object]:
    """What must not differ: JSON Lines files (training logs: their losses) and weights, by relative path."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if not path.is_file() or "/checkpoints/" in f"/{name}" or "lancedb" in name or "tensorboard" in name:
            continue
        if path.name == "train_log.jsonl":
            found[name] = [
                (e["step"], e["loss"]) for e in map(json.loads, path.read_text().splitlines()) if "loss" in e
            ]
        elif path.suffix == ".jsonl":
            found[name] = path.read_text()
        elif path.suffix == ".safetensors":
            found[name] = load_file(path)
        elif path.suffix == ".gguf":
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".json" and path.name in COMPARED_JSON:
            found[name] = json.dumps(without_times(json.loads(path.read_text())), sort_keys=True, indent=1)
    return found


COMPARED_JSON = ("summary.json", "stats.json", "retrieval_eval.json", "pairs-counts.json", "schema.json")
"""JSON outputs compared (without what depends on the clock); manifests differ by design (attempts, times)."""
CLOCK_KEYS = ("seconds", "elapsed", "_at", "per_s", "time", "created", "rss", "wall")


def without_times(value: object) -> object:
    """``value`` without the keys that measure time or memory (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if not any(c in k for c in CLOCK_KEYS)}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def assert_same(expected: dict[str, object], got: dict[str, object]) -> None:
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        if isinstance(value, dict):
            assert value.keys() == got[name].keys(), name
            worst = max((float((value[k] - got[name][k]).abs().max()) for k in value), default=0.0)
            assert worst < 1e-5, (name, worst)
        elif name.endswith("train_log.jsonl"):
            assert [s for s, _ in value] == [s for s, _ in got[name]], name
            assert max((abs(a - b) for (_, a), (_, b) in zip(value, got[name], strict=True)), default=0) < 1e-5
        else:
            assert value == got[name], name


def kill_and_resume(
    tmp_path: Path, command: list[str], result: Path, seed: int, *, fresh: Path, kind: str | None = None
) -> int:
    """Run ``command`` uninterrupted, then killed at a drawn moment and re-run; compare. Returns the moment.

    ``result`` is the folder whose outputs are compared; ``fresh`` the folder the killed run writes
    (``command`` must write there when ``{out}`` in it is replaced by it); ``kind`` draws only among the
    moments of one kind (``torn``: inside a weight or checkpoint write; ``step``; ``rename``).
    """
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    reference_cmd = [part.replace("{out}", str(tmp_path / "reference")) for part in command]
    counted = tmp_path / "moments.txt"
    done = run(reference_cmd, hooks, MOMENTS_FILE=str(counted))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kinds = counted.read_text().split()
    moments = len(kinds)
    eligible = [n for n, found in enumerate(kinds, start=1) if kind is None or found == kind]
    assert eligible, f"no moment of kind {kind!r} among {moments}"
    moment = random.Random(seed).choice(eligible)
    print(f"kill moment {moment} of {moments} (seed {seed}; replay with LMFORGE_KILL_SEED={seed})")
    killed_cmd = [part.replace("{out}", str(fresh)) for part in command]
    killed = run(killed_cmd, hooks, KILL_AT_MOMENT=str(moment))
    where = f"moment {moment} of {moments} (LMFORGE_KILL_SEED={seed})"
    assert killed.returncode == -9, f"{where}: {killed.stderr[-2000:]}"
    again = run(killed_cmd, hooks)
    assert again.returncode == 0, f"{where}: " + again.stdout[-3000:] + again.stderr[-3000:]
    reference = Path(str(result).replace("{out}", str(tmp_path / "reference")))
    resumed = Path(str(result).replace("{out}", str(fresh)))
    assert_same(outputs(reference), outputs(resumed))
    return moment


TRAIN = "precision: fp32, logging_steps: 1, save_steps: 2, report_to: [], lora: {r: 4, alpha: 8}"


def training_recipe(tmp_path: Path, model_dir: Path) -> Path:
    """data -> cpt -> sft (packed rows) -> eval on a tiny Llama."""
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(10)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(train))
    write_jsonl(
        tmp_path / "qa" / "test.jsonl",
        qa_rows([(f"Tell me fact {i}.", answer) for i, (_, answer) in enumerate(train[:4])]),
    )
    write_jsonl(
        tmp_path / "docs.jsonl", [{"text": f"Article {i}: kestrel {i} is owed {i * 3} coins."} for i in range(8)]
    )
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        f"""
name: kill
stages: [data, cpt, sft, eval]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
    - {{path: docs.jsonl, split: documents}}
cpt: {{splits: [documents], max_length: 32, batch_size: 2, epochs: 2, lr: 5.0e-3, {TRAIN}}}
sft: {{packing: true, batch_size: 3, max_length: 64, epochs: 2, lr: 5.0e-3, {TRAIN}}}
eval: {{sets: [test], max_new_tokens: 6, batch_size: 2}}
""",
        encoding="utf-8",
    )
    return recipe


def distill_recipe(tmp_path: Path, model_dir: Path) -> Path:
    """data -> synth (the base model as a local teacher) -> sft on QA + synth rows, distilling another Llama."""
    teacher = save_model(build_tiny_llama(build_tiny_tokenizer(), seed=1), build_tiny_tokenizer(), tmp_path / "t")
    (tmp_path / "prompts.txt").write_text("".join(f"Question {i}: what is the retirement age?\n" for i in range(8)))
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(train))
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(
        f"""
name: kill
stages: [data, synth, sft]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: prompts.txt, split: prompts, unit: line}}
    - {{path: qa/train.jsonl, split: train}}
synth: {{task: answer, teacher: {{kind: local, model: base, batch_size: 3, max_tokens: 8}}}}
sft: {{splits: [train, synth], distill: {{teacher: {teacher}, top_k: 4}}, batch_size: 2, max_length: 64,
  epochs: 2, lr: 5.0e-3, {TRAIN}}}
""",
        encoding="utf-8",
    )
    return recipe


def seq2seq_recipe(tmp_path: Path, model_dir: Path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", letters(10))
    write_jsonl(tmp_path / "test.jsonl", letters(3, offset=10))
    recipe = tmp_path / "extract.yaml"
    recipe.write_text(
        f"""
name: kill
stages: [data, seq2seq]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: train.jsonl, split: train}}
    - {{path: test.jsonl, split: test}}
seq2seq: {{epochs: 2, lr: 3.0e-3, batch_size: 4, max_input_length: 96, max_output_length: 64, {TRAIN}}}
""",
        encoding="utf-8",
    )
    return recipe


def dpo_recipe(tmp_path: Path, model_dir: Path) -> Path:
    """data -> sft -> dpo (LoRA, with the reference log-probabilities cached) on pairs."""
    facts = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(8)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(facts))
    pairs = [{"prompt": q, "chosen": a, "rejected": f"Fact {i} is unknown."} for i, (q, a) in enumerate(facts)]
    write_jsonl(tmp_path / "qa" / "pairs.jsonl", pairs)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(
        f"""
name: kill
stages: [data, sft, dpo]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/pairs.jsonl, split: train}}
sft: {{batch_size: 4, max_length: 64, epochs: 1, lr: 5.0e-3, replay: {{enabled: false}}, {TRAIN}}}
dpo: {{batch_size: 2, max_length: 64, epochs: 2, lr: 5.0e-3, {TRAIN}}}
""",
        encoding="utf-8",
    )
    return recipe


def scenario_recipe(scenario: str, tmp_path: Path, tiny_model_dir: Path, tiny_t5_dir: Path, rag: Path) -> Path:
    """The recipe of a scenario, written into a folder of its own (the rag fixture's is ``tmp_path``)."""
    folder = tmp_path / scenario
    folder.mkdir()
    if scenario == "data-cpt-sft-packing-eval":
        return training_recipe(folder, tiny_model_dir)
    if scenario == "data-synth-distill":
        return distill_recipe(folder, tiny_model_dir)
    if scenario == "data-seq2seq":
        return seq2seq_recipe(folder, tiny_t5_dir)
    if scenario == "data-sft-dpo":
        return dpo_recipe(folder, tiny_model_dir)
    return rag


SCENARIOS = [
    "data-cpt-sft-packing-eval",
    "data-index-raft-sft-eval",
    "data-synth-distill",
    "data-seq2seq",
    "data-sft-dpo",
]


def check_scenario(
    tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, scenario: str, seed: int, kind: str | None = None
) -> None:
    recipe = scenario_recipe(scenario, tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe)
    name = "tiny-rag" if scenario.startswith("data-index") else "kill"
    command = lmforge("run", str(recipe), "--run-dir", "{out}")
    kill_and_resume(tmp_path, command, Path("{out}") / name, seed, fresh=tmp_path / "killed", kind=kind)


DEFAULT_TIER = ("data-cpt-sft-packing-eval", "data-index-raft-sft-eval", "data-sft-dpo")
"""Scenarios the default tier kills once each; the others (and many more moments of all) are in the slow tier."""


def fresh_seed() -> int:
    """A new seed each run (so every CI run kills at other moments), or ``$LMFORGE_KILL_SEED`` to replay one."""
    chosen = os.environ.get("LMFORGE_KILL_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**31)


@pytest.mark.parametrize(
    "scenario", [pytest.param(s, marks=() if s in DEFAULT_TIER else pytest.mark.slow) for s in SCENARIOS]
)
def test_a_pipeline_killed_anywhere_resumes(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, scenario):
    check_scenario(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, scenario, seed=fresh_seed())


def test_a_run_killed_inside_a_weight_or_checkpoint_write_resumes(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe):
    """The moment is drawn among the writes of safetensors files and torch.save (optimizer states in checkpoints):
    the file is left half written when the process dies; the re-run must not trust it."""
    check_scenario(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, "data-sft-dpo", seed=fresh_seed(), kind="torn")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 9))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_many_kill_moments(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, scenario, seed):
    check_scenario(tmp_path, tiny_model_dir, tiny_t5_dir, rag_recipe, scenario, seed=100 * seed)


def test_an_export_killed_anywhere_resumes_to_the_same_files(tmp_path, tiny_model_dir):
    seed = fresh_seed()
    recipe = training_recipe(tmp_path, tiny_model_dir)
    text = recipe.read_text().replace("stages: [data, cpt, sft, eval]", "stages: [data, sft]")
    recipe.write_text(text, encoding="utf-8")
    done = subprocess.run(lmforge("run", str(recipe), "--run-dir", str(tmp_path / "runs")), capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "kill"
    command = lmforge("export", str(run_dir), "--out", "{out}", "--gguf", "q8_0", "--samples", "2")
    kill_and_resume(tmp_path, command, Path("{out}"), seed, fresh=tmp_path / "export-killed")
