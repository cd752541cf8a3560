"""Several processes on torch.distributed (gloo, CPU) train and evaluate exactly like one process.

Each test runs the real command line in fresh processes: ``lmforge run --nproc 2`` (torch's elastic
launcher), ``torchrun`` twice as two "nodes", and a rank killed with SIGKILL. Same global batch,
fp32: every logged loss within 1e-4, final weights within 1e-5, the same predictions and the same
files in the run directory.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import qa_rows, write_jsonl
from safetensors.torch import load_file
from test_rag_pipeline import rag_recipe as rag_recipe  # a fixture
from test_synth import write_recipe as write_synth_recipe

pytestmark = pytest.mark.integration

# Imported at start-up by every Python process of a test that puts this folder on PYTHONPATH: it makes
# the rank named in KILL_RANK SIGKILL itself when its Trainer is about to run step KILL_AT_STEP.
KILLER = """
import os, signal
if os.environ.get("KILL_AT_STEP") and os.environ.get("RANK") == os.environ.get("KILL_RANK"):
    from transformers import Trainer

    step_at, original = int(os.environ["KILL_AT_STEP"]), Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    Trainer.training_step = training_step
"""

SFT = """
sft:
  method: {method}
  packing: {packing}
  epochs: 2
  lr: 5.0e-3
  batch_size: 2
  grad_accum: 2
  max_length: 128
  precision: fp32
  logging_steps: 1
  save_steps: 2
  report_to: []
  lora: {{r: 4, alpha: 8}}
eval:
  sets: [test]
  max_new_tokens: 8
  batch_size: 2
"""

SFT_ONLY = SFT.format(method="lora", packing="false").split("eval:")[0]

CPT = """
cpt:
  method: lora
  epochs: 2
  lr: 5.0e-3
  batch_size: 1
  grad_accum: 2
  max_length: 32
  precision: fp32
  logging_steps: 1
  report_to: []
  lora: {r: 4, alpha: 8}
"""


def make_recipe(tmp_path: Path, model_dir: Path, stages: str, body: str) -> Path:
    train = [(f"What is fact number {i}?", f"Fact {i} is {i * 7} kestrels.") for i in range(13)]
    write_jsonl(tmp_path / "qa" / "train.jsonl", qa_rows(train))
    held_out = [(f"Tell me fact {i}.", f"Fact {i} is {i * 7} kestrels.") for i in range(5)]
    write_jsonl(tmp_path / "qa" / "test.jsonl", qa_rows(held_out))
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for i in range(5):
        text = " ".join(f"Article {i}.{j}: the pension of kestrel {j} is {i * j} coins." for j in range(6))
        (docs / f"art{i}.txt").write_text(text, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
name: dist
stages: [{stages}]
model: {{ref: {model_dir}}}
data:
  sources:
    - {{path: qa/train.jsonl, split: train}}
    - {{path: qa/test.jsonl, split: test}}
    - {{path: docs, split: train}}
{body}
""",
        encoding="utf-8",
    )
    return recipe


def lmforge(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(stage_dir: Path) -> list[tuple[int, float]]:
    entries = map(json.loads, (stage_dir / "train_log.jsonl").read_text().splitlines())
    return [(entry["step"], entry["loss"]) for entry in entries if "loss" in entry]


def weights(stage_dir: Path) -> dict:
    folder = stage_dir / ("adapter" if (stage_dir / "adapter").is_dir() else "model")
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_same_training(one: Path, two: Path) -> None:
    expected, got = losses(one), losses(two)
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert max(abs(a - b) for (_, a), (_, b) in zip(expected, got, strict=True)) < 1e-4
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys() and w1
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5


def files(run: Path) -> list[str]:
    """The run directory's files; inside LanceDB's and TensorBoard's folders (whose file names hold
    random ids, hosts and times) only the folders themselves."""
    names = set()
    for path in run.rglob("*"):
        name = str(path.relative_to(run))
        for opaque in ("index/lancedb", "sft/tensorboard"):
            if name.startswith(opaque + "/"):
                name = opaque
        if path.is_file() or name in ("index/lancedb", "sft/tensorboard"):
            names.add(name)
    return sorted(names)


def run_both(tmp_path: Path, recipe: Path) -> tuple[Path, Path]:
    """The recipe in one process and in two (lmforge run --nproc 2); returns both run folders."""
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        done = lmforge("run", str(recipe), "--run-dir", str(tmp_path / name), *extra)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path / "one" / "dist", tmp_path / "two" / "dist"


@pytest.mark.parametrize(("method", "packing"), [("lora", "false"), ("full", "true")])
def test_sft_on_two_processes_matches_one(tmp_path, tiny_model_dir, method, packing):
    body = SFT.format(method=method, packing=packing)
    if method == "full":  # TensorBoard on: its writer belongs to the leader alone
        body = body.replace("report_to: []", "report_to: [tensorboard]")
    recipe = make_recipe(tmp_path, tiny_model_dir, "data, sft, eval", body)
    one, two = run_both(tmp_path, recipe)
    assert_same_training(one / "sft", two / "sft")
    if method == "full":
        writers = {path.name.split(".")[-2] for path in (two / "sft" / "tensorboard").rglob("events.out.tfevents.*")}
        assert len(writers) == 1, writers  # one process's event files (the name ends in host.pid.n)
    # Data-parallel eval: the same predictions, in the same order.
    assert (one / "eval" / "predictions.jsonl").read_text() == (two / "eval" / "predictions.jsonl").read_text()
    # The run directory is the one a single process leaves, plus the layout in the manifests.
    assert files(one) == files(two)
    manifest = json.loads((two / "sft" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["metrics"]["processes"] == {
        "world_size": 2,
        "nodes": 1,
        "strategy": "ddp",
        "per_device_batch": 2,
        "grad_accum": 1,
        "global_batch": 4,
        "passes_per_step": 1,
        "rows_per_pass": 2,
    }
    assert manifest["metrics"]["threads"] == 1  # two processes on two cores
    assert json.loads((one / "sft" / "manifest.json").read_text())["world_size"] == 1
    if method == "lora":  # accelerate's launcher runs the same thing (torchrun underneath; gloo without CUDA)
        accelerate = Path(sys.executable).with_name("accelerate")
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lmforge", "run", str(recipe)]
        done = subprocess.run(
            [*command, "--run-dir", str(tmp_path / "acc")], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert_same_training(one / "sft", tmp_path / "acc" / "dist" / "sft")


def test_cpt_with_packing_on_two_processes_matches_one(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir, "data, cpt", CPT)
    one, two = run_both(tmp_path, recipe)
    assert_same_training(one / "cpt", two / "cpt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_match_two_processes_on_one(tmp_path, tiny_model_dir):
    """Two launcher invocations (--nnodes 2), rendezvous on 127.0.0.1, as on two machines."""
    recipe = make_recipe(
        tmp_path, tiny_model_dir, "data, sft", SFT.format(method="lora", packing="false").split("eval:")[0]
    )
    single = lmforge("run", str(recipe), "--run-dir", str(tmp_path / "single"), "--nproc", "2")
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "-m",
                "lmforge",
                "run",
                str(recipe),
                "--run-dir",
                str(tmp_path / "nodes"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert_same_training(tmp_path / "single" / "dist" / "sft", tmp_path / "nodes" / "dist" / "sft")
    manifest = json.loads((tmp_path / "nodes" / "dist" / "sft" / "manifest.json").read_text())
    assert manifest["metrics"]["processes"]["nodes"] == 2


def test_a_killed_rank_stops_the_job_and_the_rerun_resumes_with_another_process_count(tmp_path, tiny_model_dir):
    recipe = make_recipe(
        tmp_path, tiny_model_dir, "data, sft", SFT.format(method="lora", packing="false").split("eval:")[0]
    )
    reference = lmforge("run", str(recipe), "--run-dir", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(KILLER, encoding="utf-8")
    killer = {"PYTHONPATH": str(tmp_path / "hooks"), "KILL_AT_STEP": "5", "KILL_RANK": "1"}
    started = time.monotonic()
    killed = lmforge("run", str(recipe), "--run-dir", str(tmp_path / "killed"), "--nproc", "2", env=killer)
    assert killed.returncode != 0
    assert time.monotonic() - started < 60  # start-up included; the stop itself takes about a second
    assert "rank 1" in killed.stderr and "SIGKILL" in killed.stderr and "during stage 'sft'" in killed.stderr
    run = tmp_path / "killed" / "dist"
    # Killed, or marked failed by rank 0 when its collective lost the peer: either resumes.
    assert json.loads((run / "sft" / "manifest.json").read_text())["status"] in ("running", "failed")
    assert (run / "sft" / "checkpoints" / "checkpoint-4").is_dir()
    # Resume in ONE process from the checkpoint two processes wrote.
    resumed = lmforge("run", str(recipe), "--run-dir", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming an interrupted run from checkpoint-4" in resumed.stdout
    assert_same_training(tmp_path / "reference" / "dist" / "sft", run / "sft")


def test_a_taken_port_is_a_clear_error(tmp_path, tiny_model_dir):
    recipe = make_recipe(
        tmp_path, tiny_model_dir, "data, sft", SFT.format(method="lora", packing="false").split("eval:")[0]
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = lmforge("run", str(recipe), "--nproc", "2", "--master-port", str(port))
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr


def test_the_retrieval_pipeline_on_two_processes_matches_one(tmp_path, rag_recipe):
    """data -> index (embedding shared out) -> RAFT sft -> four eval variants: the same files and results."""
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        done = lmforge(
            "run", str(rag_recipe), "--run-dir", str(tmp_path / name), "--set", "sft.logging_steps=1", *extra
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = tmp_path / "one" / "tiny-rag", tmp_path / "two" / "tiny-rag"
    assert files(one) == files(two)
    for name in ("chunks.jsonl", "retrieved/test.jsonl", "splits/raft.jsonl", "retrieval_eval.json"):
        assert (one / "index" / name).read_text() == (two / "index" / name).read_text(), name
    assert_same_training(one / "sft", two / "sft")
    assert (one / "eval" / "predictions.jsonl").read_text() == (two / "eval" / "predictions.jsonl").read_text()


@pytest.mark.parametrize("task", [pytest.param("answer", marks=pytest.mark.slow), "qa_from_docs"])
def test_synth_with_a_local_teacher_on_two_processes_matches_one(tmp_path, tiny_model_dir, task):
    """A local teacher's phases are answered data-parallel: the same records, rejects and cache."""
    recipe = write_synth_recipe(tmp_path, tiny_model_dir, "http://unused", task)
    settings = ["synth.teacher.kind=local", "synth.teacher.model=base", "synth.teacher.batch_size=3"]
    settings += ["synth.teacher.max_tokens=8", *(["synth.judge=true"] if task != "answer" else [])]
    overrides = [arg for item in settings for arg in ("--set", item)]
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        done = lmforge("run", str(recipe), "--run-dir", str(tmp_path / name), *overrides, *extra)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = tmp_path / "one" / f"synth-{task}" / "synth", tmp_path / "two" / f"synth-{task}" / "synth"
    for name in ("records.jsonl", "rejects.jsonl"):
        assert (one / name).read_text() == (two / name).read_text(), name
    requests = [json.loads((run / "stats.json").read_text())["requests"] for run in (one, two)]
    assert requests[0]["sent"] == requests[1]["sent"] > 0 and requests[1]["failed"] == 0
    # A rerun answers from the leader's cache alone: nothing is generated again.
    again = lmforge("run", str(recipe), "--run-dir", str(tmp_path / "two"), *overrides, "--set", "synth.limit=100")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((two / "stats.json").read_text())["requests"]["sent"] == 0


def test_dpo_with_built_and_judged_pairs_on_two_processes_matches_one(tmp_path, tiny_model_dir):
    """The pairs are sampled data-parallel and graded by an endpoint judge the leader alone asks: the same
    pairs, judge cache and training as in one process."""
    from server_process import start_server, stop_server

    env = {key: value for key, value in os.environ.items() if key != "LMFORGE_API_KEY"}
    faults = {"replies": [["Grade how faithful", '{"score": 2, "reason": "scripted grade"}']]}
    args = [str(tiny_model_dir), "--name", "judge", "--threads", "1", "--batch-wait-ms", "20"]
    server, url = start_server(args, env, tmp_path / "judge-server.log", faults=faults)
    judge = f'{{teacher: {{base_url: "{url}/v1", model: judge, max_tokens: 32}}, min_score: 3}}'
    body = f"""
dpo:
  build: {{samples: 2, max_new_tokens: 6, batch_size: 4, judge: {judge}}}
  epochs: 1
  batch_size: 2
  grad_accum: 2
  max_length: 128
  precision: fp32
  logging_steps: 1
  report_to: []
  lora: {{r: 4, alpha: 8}}
"""
    try:
        one, two = run_both(tmp_path, make_recipe(tmp_path, tiny_model_dir, "data, dpo", body))
    finally:
        stop_server(server)
    counts = [json.loads((run / "dpo" / "prepared" / "pairs-counts.json").read_text()) for run in (one, two)]
    assert counts[0]["judged"] == counts[1]["judged"] > 0 and counts[0]["pairs"] == counts[1]["pairs"] > 0
    pairs = [(run / "dpo" / "prepared" / "pairs.jsonl").read_text() for run in (one, two)]
    assert pairs[0] == pairs[1]
    assert_same_training(one / "dpo", two / "dpo")
    # the reward statistics are the whole batch's, all-reduced, not rank 0's half
    logged = [logged_stats(run / "dpo", ("reward_margin", "reward_accuracy")) for run in (one, two)]
    assert logged[0] and len(logged[0]) == len(logged[1])
    assert all(abs(a - b) < 1e-4 for a, b in zip(logged[0], logged[1], strict=True)), logged


def logged_stats(stage: Path, keys: tuple[str, ...]) -> list[float]:
    entries = [json.loads(line) for line in (stage / "train_log.jsonl").read_text().splitlines()]
    return [entry[key] for entry in entries for key in keys if key in entry and "loss" in entry]
