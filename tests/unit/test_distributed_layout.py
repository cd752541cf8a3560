"""Sharding of an epoch across processes, the per-process layout, the launcher's error messages and
the leader-only run directory — everything of the distributed path that needs no second process."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from lmforge.config import DistributedSpec, SFTSpec
from lmforge.distributed import World, gather_shares, share, world
from lmforge.engine.batches import StepBatches, WithFillers, blank_fillers, call_loss, is_filler
from lmforge.engine.layout import ProcessLayout, check_strategy, process_layout
from lmforge.engine.tokenize import IGNORE
from lmforge.errors import ConfigError, LaunchError
from lmforge.launch import failure_error, running_stage
from lmforge.rundir import StageDir, atomic_write_json, remove_tree, stage_folder


def step_sets(n: int, per_device: int, accum: int, processes: int) -> list[list[int]]:
    """The examples of each optimizer step (fillers left out), over every rank."""
    plans = [StepBatches(range(n), per_device, accum, rank, processes).plan() for rank in range(processes)]
    assert len({len(plan) for plan in plans}) == 1, "every rank must run the same number of micro-batches"
    lengths = [len(plan) for plan in plans]
    assert lengths[0] == len(StepBatches(range(n), per_device, accum, 0, processes))
    steps, micro = [], 0
    while micro < lengths[0]:
        count = min(accum, lengths[0] - micro)
        examples = [i for plan in plans for batch in plan[micro : micro + count] for i in batch if i >= 0]
        steps.append(sorted(examples))
        micro += count
    return steps


@pytest.mark.parametrize(
    ("n", "per_device", "accum", "processes"),
    [(13, 2, 1, 2), (13, 1, 2, 2), (7, 4, 1, 3), (40, 3, 2, 4), (1, 4, 2, 2), (16, 2, 2, 4)],
)
def test_every_example_once_and_the_same_steps_as_one_process(n, per_device, accum, processes):
    """Same global batch as one process with ``per_device x processes`` per micro-batch: the same steps."""
    steps = step_sets(n, per_device, accum, processes)
    single = step_sets(n, per_device * processes, accum, 1)
    assert steps == single
    assert sorted(itertools.chain.from_iterable(steps)) == list(range(n))


def test_a_slot_with_no_example_gets_a_filler_whose_labels_are_ignored():
    plan = StepBatches(range(13), 2, 1, rank=1, processes=2).plan()
    assert plan[-1] == [-1 - 12]  # the last step holds example 12 alone, on rank 0
    dataset = WithFillers([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]} for _ in range(13)])
    collate = blank_fillers(lambda items: {"labels": torch.tensor([item["labels"] for item in items])})
    assert is_filler(collate([dataset[-13]]))
    assert not is_filler(collate([dataset[12]]))


def test_the_order_is_redrawn_per_epoch_through_set_epoch():
    class Order:
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 4

        def __iter__(self):
            return iter([(i + self.epoch) % 4 for i in range(4)])

    batches = StepBatches(Order(), 2, 1)
    first = batches.plan()
    batches.set_epoch(1)
    assert batches.plan() != first


def test_keep_divides_accumulation_then_the_micro_batch():
    dist = DistributedSpec()
    two = World(0, 2, 0, 2, 0)
    layout = process_layout(SFTSpec(batch_size=8, grad_accum=4), dist, two)
    assert (layout.per_device, layout.accum, layout.global_batch) == (8, 2, 32)
    layout = process_layout(SFTSpec(batch_size=8, grad_accum=1), dist, two)
    assert (layout.per_device, layout.accum, layout.global_batch) == (4, 1, 8)
    grow = process_layout(SFTSpec(batch_size=8, grad_accum=1), DistributedSpec(global_batch="grow"), two)
    assert grow.global_batch == 16
    with pytest.raises(ConfigError, match=r"neither grad_accum \(1\) nor batch_size \(3\) divides by 2"):
        process_layout(SFTSpec(batch_size=3, grad_accum=1), dist, two)


def test_trainer_arguments_per_strategy():
    two = World(0, 2, 0, 2, 0)
    assert process_layout(SFTSpec(), DistributedSpec(), World(0, 1, 0, 1, 0)).trainer_arguments() == {}
    ddp = process_layout(SFTSpec(grad_accum=2), DistributedSpec(), two).trainer_arguments()
    assert ddp["ddp_backend"] == "gloo" and ddp["ddp_find_unused_parameters"] is False
    fsdp_spec = DistributedSpec(strategy="fsdp", fsdp={"sharding": "shard_grad_op", "cpu_offload": True})
    fsdp = ProcessLayout(8, 1, two, fsdp_spec).trainer_arguments()  # FSDP itself needs a GPU
    assert fsdp["fsdp"] is True
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["reshard_after_forward"] is False
    assert fsdp["fsdp_config"]["cpu_offload"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharding_strategies_are_refused_without_a_gpu(strategy):
    """accelerate runs FSDP / DeepSpeed on accelerators only and would silently fall back to DDP on a CPU."""
    with pytest.raises(ConfigError, match=rf"got '{strategy}', but no CUDA GPU is visible"):
        process_layout(SFTSpec(grad_accum=2), DistributedSpec(strategy=strategy), World(0, 2, 0, 2, 0))


def test_deepspeed_needs_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "deepspeed" else real(name))
    with pytest.raises(ConfigError, match="pip install deepspeed"):
        check_strategy(DistributedSpec(strategy="deepspeed"))


def test_world_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("GROUP_RANK", "1")
    assert world() == World(3, 4, 1, 2, 1)
    assert world().as_manifest() == {"world_size": 4, "nodes": 2}
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(LaunchError, match="inconsistent launcher environment: RANK=4, WORLD_SIZE=4"):
        world()


def test_share_and_gather_are_no_ops_for_one_process():
    assert share([1, 2, 3]) == [1, 2, 3]
    assert gather_shares([1, 2, 3]) == [1, 2, 3]


def test_followers_write_nothing_to_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    StageDir.open(tmp_path, "sft").start("f", {}, {})
    stage_folder(tmp_path / "model", lambda staging: (staging.mkdir(), (staging / "w").write_text("w")))
    (tmp_path / "keep").mkdir()
    remove_tree(tmp_path / "keep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    StageDir.open(tmp_path, "sft").start("f", {}, {})
    assert json.loads((tmp_path / "sft" / "manifest.json").read_text())["world_size"] == 1


def test_call_loss_goes_through_the_wrappers_forward():
    calls = []

    class Inner(torch.nn.Module):
        def forward(self, batch):  # never called: the loss function stands in for it
            raise AssertionError

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, batch):
            calls.append("wrapper")
            return self.module(batch)

    Wrapper.__name__ = "DistributedDataParallel"
    inner = Inner()
    loss, count = call_loss(Wrapper(inner), lambda model, batch: (batch["x"] * 2, 1), {"x": torch.tensor(3.0)})
    assert calls == ["wrapper"] and float(loss) == 6.0 and count == 1
    assert "forward" not in vars(inner)  # restored


class _Failure:
    def __init__(self, exitcode, pid=4242, timestamp=1):
        self.exitcode, self.pid, self.timestamp = exitcode, pid, timestamp

    def signal_name(self):
        return "SIGKILL"


class _ChildFailed:
    def __init__(self, failures):
        self.failures = failures

    def get_first_failure(self):
        rank = min(self.failures, key=lambda r: self.failures[r].timestamp)
        return rank, self.failures[rank]


def test_a_failed_rank_is_named_with_its_signal_and_stage(tmp_path: Path):
    StageDir.open(tmp_path, "data").start("f", {}, {})
    StageDir.open(tmp_path, "data").finish({})
    StageDir.open(tmp_path, "sft").start("g", {}, {})
    assert running_stage(tmp_path) == "sft"
    error = failure_error(_ChildFailed({1: _Failure(-9, timestamp=1), 0: _Failure(-15, timestamp=2)}), tmp_path)
    assert str(error).startswith("rank 1 (pid 4242) was killed by SIGKILL during stage 'sft'; ranks [0] stopped")
    assert error.exit_code == 1
    error = failure_error(_ChildFailed({0: _Failure(2), 1: _Failure(2)}), tmp_path)
    assert error.exit_code == 2 and "exited with code 2" in str(error)
