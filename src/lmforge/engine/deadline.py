"""A training stage inside the run's time budget (:mod:`lmforge.clock`).

After :data:`PROBE_STEPS` optimizer steps the callback knows this machine's time per step (the first step,
which pays for kernel warm-up, left out). When the planned steps do not fit the stage's allotted time, the
schedule is shortened to the steps that do — the learning rate then decays to its end at the new last step, as
a shorter run would have (:func:`refit_schedule`) — and training stops there with its weights saved as usual.
The schedule is fitted again, from the steps since the first fit (the first steps of a run are often slower or
faster than its average: with rows of very different lengths two steps can take three times the mean), once a
quarter and once half of the way through — of the allotted time or of the fitted steps, whichever comes first,
so a schedule cut far too short is lengthened before it ends: the end moves later when steps got faster (never
past the planned steps) or earlier when they got slower. The estimate is re-checked every step: should the
steps get slower still, training stops when the time is up, whatever the step.
What happened is kept for the manifest (:meth:`BudgetCallback.outcome`) and said in the log.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

from lmforge import clock, distributed
from lmforge.log import stage_log

PROBE_STEPS = 3
"""Steps measured before the schedule is fitted (step 1 excluded from the rate)."""
SAFETY = 0.97
"""Share of the allotted time the fitted schedule plans to use (the rest absorbs saving and jitter)."""
REFITS = (0.25, 0.5)
"""Progress (the larger of the allotted time's share used and the fitted steps' share done) at which the
schedule is fitted again from the steps measured since the first fit."""


def budget_callback(label: str) -> Any:
    """The callback for a training stage when the run has a budget, else None."""
    allotted = clock.allotted(label)
    if allotted is None:
        return None
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        def __init__(self) -> None:
            self.allotted, self.label = allotted, label
            self.started = self.after_first = 0.0
            self.planned = self.end = 0
            self.why = ""
            self.probed: tuple[int, float] | None = None
            self.refits = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.planned = self.end = state.max_steps
            stage_log(label).info(f"budget: {clock.shown(self.allotted)} for {label} ({state.max_steps} steps planned)")

        def on_step_end(self, args, state, control, **kwargs):
            now, step = time.monotonic(), state.global_step
            if step == 1:
                self.after_first = now
            elif step == PROBE_STEPS and self.end == self.planned:
                per_step = (now - self.after_first) / (step - 1)
                fits = step + math.floor((SAFETY * self.allotted - (now - self.started)) / per_step)
                self.probed = (step, now)
                if fits < self.planned:
                    self.shorten(state, max(step, fits), per_step, kwargs.get("lr_scheduler"))
            elif self.probed and self.due_for_refit(step, now, self.probed[0]):
                self.refits += 1
                per_step = (now - self.probed[1]) / (step - self.probed[0])
                fits = min(self.planned, step + math.floor((SAFETY * self.allotted - (now - self.started)) / per_step))
                if fits != self.end and (self.end < self.planned or fits < self.end):
                    self.shorten(state, max(step, fits), per_step, kwargs.get("lr_scheduler"), again=True)
            over = now - self.started >= self.allotted and step < self.end
            if distributed.leader_decides(step >= self.end or over):  # every process stops at the same step
                control.should_training_stop = True
                if over:
                    self.why = f"{self.why}; stopped at step {step}: the allotted time was up".lstrip("; ")
                    stage_log(label).warning(f"budget: the time for {label} is up; stopping at step {step}")
                self.end = state.max_steps = step

        def due_for_refit(self, step: int, now: float, probed_at: int) -> bool:
            """Whether the next refit's moment (:data:`REFITS`) has come, a step measured since the first fit."""
            if self.refits >= len(REFITS) or step >= self.end or step <= probed_at:
                return False
            return max((now - self.started) / self.allotted, step / self.end) >= REFITS[self.refits]

        def shorten(self, state: Any, steps: int, per_step: float, scheduler: Any, again: bool = False) -> None:
            at = state.global_step
            self.end = state.max_steps = steps  # what the progress line and bar count to from now on
            refitted = refit_schedule(scheduler, steps)
            fit = f"{steps} of {self.planned} steps fit {clock.shown(self.allotted)} at {per_step:.1f}s a step" + (
                "; the learning-rate schedule ends at the new last step" if refitted else ""
            )
            again_at = f"refitted at step {at}: " if again else ""
            self.why = f"{self.why}; {again_at}{fit}" if again and self.why else fit
            stage_log(self.label).info(f"budget: {again_at}{fit}")

        def outcome(self) -> dict[str, Any]:
            return {
                "allotted_s": round(self.allotted, 1),
                "planned_steps": self.planned,
                "steps": self.end,
                "cut": self.end < self.planned,
                "why": self.why or "the planned steps fit",
            }

    return BudgetCallback()


def refit_schedule(scheduler: Any, total_steps: int) -> bool:
    """Make a transformers LambdaLR schedule end at ``total_steps`` from the step it is at, without a jump:
    what is left of its curve (warm-up included, so a shorter run warms up for its share of the steps, as
    ``warmup_ratio`` means) is stretched or squeezed onto the steps left, so the learning rate never rises
    when the end moves later. False when no schedule has an end to move (a constant one)."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    at = getattr(scheduler, "last_epoch", 0)
    changed = False
    for index, function in enumerate(lambdas or []):
        end = schedule_end(function)
        if end is not None and end > at:
            lambdas[index] = functools.partial(_stretched, function, at, end, total_steps)
            changed = True
    return changed


def schedule_end(function: Any) -> int | None:
    """The step a schedule's learning-rate multiplier reaches its end: a transformers schedule's
    ``num_training_steps``, or the end a refit gave it; None for one without an end."""
    if not isinstance(function, functools.partial):
        return None
    if function.func is _stretched:
        return function.args[3]
    return function.keywords.get("num_training_steps")


def _stretched(previous: Any, at: int, end: int, new_end: int, step: float) -> float:
    """``previous``'s multiplier up to step ``at``, then the rest of its curve (``at`` to ``end``) spread over
    ``at`` to ``new_end``."""
    if step <= at or new_end <= at:
        return previous(step)
    return previous(at + (step - at) * (end - at) / (new_end - at))


__all__ = ["PROBE_STEPS", "budget_callback", "refit_schedule"]
