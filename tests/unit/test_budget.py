"""A run inside a time budget: durations parse, the time left is shared out, a schedule that does not fit is
shortened (its learning rate still decaying to the new end), and a budgeted run ends in time on a tiny model."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from lmforge import clock
from lmforge.config import load_recipe
from lmforge.engine.deadline import refit_schedule
from lmforge.errors import ConfigError
from lmforge.pipeline import run_recipe
from lmforge.rundir import StageDir


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("1h30m", 5400), ("90s", 90), ("1h 5m 30s", 3930), (600, 600), ("42", 42)]
)
def test_durations(text, seconds):
    assert clock.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "15 minutes please", "0", -3, "5x"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="expected a duration"):
        clock.parse_duration(text)


def test_a_bad_budget_names_the_recipe_key(tiny_recipe):
    with pytest.raises(ConfigError, match="budget"):
        load_recipe(tiny_recipe, ["budget=tomorrow"])
    assert load_recipe(tiny_recipe, ["budget=2m"]).budget == 120.0


def test_training_stages_share_what_later_stages_do_not_keep():
    clock.start(1000, ["cpt", "sft"])
    try:
        clock.reserve("eval", 200)
        assert clock.allotted("cpt") == pytest.approx(400, abs=1)  # (1000 - 200) shared with sft
        clock.finished("cpt")
        assert clock.allotted("sft") == pytest.approx(800, abs=1)
        clock.finished("eval")
        assert clock.allotted("sft") == pytest.approx(1000, abs=1)
    finally:
        clock.stop()
    assert clock.allotted("sft") is None and clock.remaining() is None


def _rates(kind: str, warmup: int, total: int, steps: int, refits: dict[int, int]) -> list[float]:
    """The learning rate after each of ``steps`` steps of a transformers schedule, refitted to end at
    ``refits[step]`` after those steps."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rates = []
    for step in range(1, steps + 1):
        optimizer.step()
        scheduler.step()
        if step in refits:
            assert refit_schedule(scheduler, refits[step])
        rates.append(scheduler.get_last_lr()[0])
    return rates


def test_a_shortened_schedule_decays_to_its_new_end():
    rates = _rates("cosine", warmup=2, total=100, steps=10, refits={3: 10})
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # step 10 of 10: the end of the cosine


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_a_schedule_lengthened_mid_run_goes_on_from_its_learning_rate(kind):
    """A refit that moves the end later (faster steps than first measured) must not raise the learning rate:
    halfway through 100 steps the cosine is at half its peak; ending at 200 instead goes on down from there
    (and shortened again at step 120, to 160)."""
    rates = _rates(kind, warmup=10, total=100, steps=200, refits={50: 200, 120: 160})
    after = rates[49:160]
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(after))
    assert rates[50] == pytest.approx(rates[49], abs=0.02)  # no jump at the refit
    assert rates[159] == pytest.approx(0.0, abs=1e-9)  # the end of the schedule at its last end


def test_a_schedule_cut_during_warm_up_warms_up_for_its_share():
    """Cut from 1,000 to 100 steps at step 3 with a 10% warm-up: the peak comes near step 12 (3 steps warmed
    up slowly, the rest of the warm-up squeezed tenfold), not at step 100."""
    rates = _rates("cosine", warmup=100, total=1000, steps=100, refits={3: 100})
    peak = max(range(100), key=rates.__getitem__) + 1
    assert 10 <= peak <= 14 and rates[-1] == pytest.approx(0.0, abs=1e-9)


def _budgeted_steps(monkeypatch, step_seconds, last_step: int | None = None):
    """Drive sft's budget callback (100 s, 1,000 steps planned) on a fake clock: step N takes
    ``step_seconds(N)``; until the callback stops training, or ``last_step``. Returns (callback, state, seconds)."""
    from types import SimpleNamespace

    from lmforge.engine import deadline

    now = [0.0]
    monkeypatch.setattr(deadline.time, "monotonic", lambda: now[0])
    clock.start(100, ["sft"])
    try:
        callback = deadline.budget_callback("sft")
        state = SimpleNamespace(max_steps=1000, global_step=0)
        callback.on_train_begin(None, state, None)
        control = SimpleNamespace(should_training_stop=False)
        while not control.should_training_stop and state.global_step != last_step:
            state.global_step += 1
            now[0] += step_seconds(state.global_step)
            callback.on_step_end(None, state, control)
    finally:
        clock.stop()
    return callback, state, now[0]


def test_a_shortened_schedule_is_what_the_progress_line_counts_to(monkeypatch):
    callback, state, _ = _budgeted_steps(monkeypatch, lambda step: 10.0, last_step=3)  # about 9 steps fit
    assert callback.end == state.max_steps < 20 and callback.outcome()["planned_steps"] == 1000


def test_a_second_fit_lengthens_a_schedule_whose_steps_got_faster(monkeypatch):
    """Steps 2-3 take 10 s, later ones 8 s: the first fit (9 steps in 100 s) would leave a fifth of the time
    unused; the next fit, from the steps since the first, moves the end to 11."""
    first, *_ = _budgeted_steps(monkeypatch, lambda step: 10.0, last_step=3)
    assert first.end == 9
    callback, state, seconds = _budgeted_steps(monkeypatch, lambda step: 10.0 if step <= 3 else 8.0)
    assert state.global_step == callback.end == state.max_steps == 11 and seconds <= 100
    assert "refitted at step 4: 11 of 1000 steps" in callback.outcome()["why"]


def test_a_schedule_cut_far_too_short_is_lengthened_before_it_ends(monkeypatch):
    """Steps 2-3 are long (20 s: rows of a thousand tokens), the rest take 3 s, as on the licences recipe, where
    two slow steps fitted 73 of 612 steps and sft ended with two thirds of its time unused. The first fit
    plans 5 steps, which end before half the time is gone; the refit a quarter of the way through the fitted
    steps moves the end to 20, and the run ends near its budget."""
    first, *_ = _budgeted_steps(monkeypatch, lambda step: 5.0 if step == 1 else 20.0, last_step=3)
    assert first.end == 5
    callback, state, seconds = _budgeted_steps(monkeypatch, lambda step: {1: 5.0, 2: 20.0, 3: 20.0}.get(step, 3.0))
    assert state.global_step == callback.end == 20 and 90 <= seconds <= 100
    assert (
        callback.outcome()["why"].startswith("5 of 1000 steps")
        and "refitted at step 4: 20 of 1000" in (callback.outcome()["why"])
    )


def test_a_budgeted_run_cuts_its_schedule_and_ends_in_time(tiny_recipe):
    budget = 25
    recipe = load_recipe(tiny_recipe, [f"budget={budget}", "sft.epochs=400", "sft.logging_steps=50"])
    started = time.monotonic()
    run_recipe(recipe)
    took = time.monotonic() - started
    run = recipe.run_path()
    sft = StageDir.open(run, "sft").manifest
    outcome = sft["metrics"]["budget"]
    assert outcome["planned_steps"] == 1200 and outcome["cut"] and outcome["steps"] == sft["metrics"]["steps"] < 1200
    # fitted after steps 2-3, or (when later steps ran slower than those, as on a loaded machine) stopped when
    # the time was up: either way it said why
    assert ("fit" in outcome["why"] or "time was up" in outcome["why"]) and sft["config"]["budget"] == budget
    assert took < budget + 20, took  # ending in time (slack for loading and saving on a loaded machine)
    summary = json.loads((run / "eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["variants"]  # eval kept its time and ran
    assert not clock.active()


def test_eval_prompts_are_measured_as_long_as_the_eval_sets_own(tmp_path, tiny_model_dir):
    """The probe reads prompts as long as eval's (template and system prompt included, the reply left out)."""
    from lmforge.models import load_tokenizer
    from lmforge.perf.budget import prompt_tokens

    tokenizer = load_tokenizer(tiny_model_dir)
    system = {"role": "system", "content": "You are an expert on a long code of many articles. " * 4}
    rows = [
        {"messages": [system, {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "x"}]}
        for i in range(3)
    ]
    split = tmp_path / "test.jsonl"
    split.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    asked = tokenizer.apply_chat_template(rows[0]["messages"][:2], add_generation_prompt=True, tokenize=False)
    expected = len(tokenizer(asked, add_special_tokens=False)["input_ids"])
    assert expected > 48 and prompt_tokens(tokenizer, str(split), 32) == pytest.approx(expected, abs=1)
    tokenizer.chat_template = None
    assert prompt_tokens(tokenizer, str(split), 32) == 48  # no template: the fixed probe length


def test_budget_zero_on_the_command_line_runs_without_one(tiny_recipe):
    from lmforge.cli_common import with_budget

    assert with_budget(None, "0") == ["budget=null"] and with_budget(["a=1"], "None") == ["a=1", "budget=null"]
    assert load_recipe(tiny_recipe, [*with_budget(["budget=15m"], "0")]).budget is None  # a recipe's own too
    assert load_recipe(tiny_recipe, with_budget(None, "90")).budget == 90


def test_a_variant_with_passages_is_counted_with_the_passages_it_reads(monkeypatch, tmp_path, tiny_recipe):
    """Passages make eval's prompts many times longer (licences: 3 chunks of 200 tokens beside a 50-token
    question; counted twice, eval there took a third longer than kept and the run overran its budget): the
    reading of a rag variant is the measured reading scaled by the tokens it reads."""
    from types import SimpleNamespace

    from lmforge.evaluate import variants
    from lmforge.perf import budget

    split = tmp_path / "test.jsonl"
    split.write_text('{"id": 1}\n' * 40, encoding="utf-8")  # 40 questions: two batches of 32
    written = SimpleNamespace(manifest={"outputs": {"splits": {"test": str(split)}}})
    monkeypatch.setattr(budget.StageDir, "open", staticmethod(lambda *args: written))
    monkeypatch.setattr(budget, "decoding_seconds", lambda recipe, path: (0.01, 1.0, 50))  # step, reading, tokens
    recipe = load_recipe(
        tiny_recipe,
        ["eval.sets=[test]", "eval.batch_size=32", "eval.max_new_tokens=10", "index.top_k=3",
         "index.chunk.max_tokens=100"],
    )  # fmt: skip

    def seconds(*rag: bool) -> float:
        monkeypatch.setattr(variants, "variant_specs", lambda recipe: [SimpleNamespace(rag=r) for r in rag])
        estimate = budget.eval_estimate(recipe)
        assert estimate is not None
        return estimate.seconds

    load = 2 * budget.LOAD_SECONDS
    assert seconds(False, False) == pytest.approx(2 * (1.0 + 1.0 + 2 * 10 * 0.01) + load)
    # with passages: 1.0 s x (50 + 3 x 100) / 50 tokens
    assert seconds(False, True) == pytest.approx(2 * (1.0 + 7.0 + 2 * 10 * 0.01) + load)
