"""``training.max_minutes``: as many optimizer steps as fit a time budget, with a complete schedule.

Stopping a run when its time is up would cut the learning-rate schedule short (a linear decay stopped
half-way leaves the rate high). Instead the number of steps is fixed before training starts: a few
steps are run and timed on the real batches (forward and backward, no optimizer step, so the weights do
not change), and ``max_steps`` becomes what the rest of the budget can hold. The scheduler and its
warm-up are then laid out over exactly those steps, as if the user had written that ``max_steps``.
The configured ``max_steps`` (or ``num_train_epochs``) stays an upper bound.

The budget covers the timing steps and the training steps (not loading, evaluation or saving the model).
Timing stops early once it has used a tenth of the budget, so a very slow machine spends at most that
(plus the step under way) on it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

# Steps run before timing starts (first-call allocations, thread pools), then steps that are timed.
WARMUP_STEPS = 1
TIMED_STEPS = 3
# Share of the remaining budget kept for what the timed steps leave out: the optimizer step, logging,
# the end-of-run checkpoint, and a machine that slows down during the run.
SAFETY_MARGIN = 0.05
# Timing stops early once it has used this share of the budget (a very slow machine): the warm-up step is
# then the measurement if it is the only one.
MAX_TIMING_SHARE = 0.1

_clock = time.perf_counter  # replaced in tests


@dataclasses.dataclass
class StepBudget:
    """What was measured and chosen; written to run.json and metrics.json."""

    max_minutes: float
    seconds_per_step: float
    measuring_seconds: float
    cap: int
    steps: int
    reason: str

    def describe(self) -> str:
        return (
            f"time budget: training.max_minutes = {self.max_minutes:g} ({self.max_minutes * 60:.0f} s); "
            f"{self.reason}"
        )


def choose_steps(
    budget_seconds: float, spent_seconds: float, seconds_per_step: float, cap: int, timed_steps: int = TIMED_STEPS
) -> tuple[int, str]:
    """Steps that fit in what is left of the budget, at most ``cap``; at least one step. And why."""
    left = max(budget_seconds - spent_seconds, 0.0)
    usable = left * (1.0 - SAFETY_MARGIN)
    fitting = math.floor(usable / seconds_per_step) if seconds_per_step > 0 else cap
    steps = max(1, min(cap, fitting))
    measured = (
        f"{timed_steps} timed step{'s' if timed_steps != 1 else ''} took {seconds_per_step:.2f} s each; "
        f"{left:.0f} s of the budget are left after {spent_seconds:.0f} s of timing, {usable:.0f} s after a "
        f"{SAFETY_MARGIN:.0%} margin"
    )
    if fitting >= cap:
        why = f"all {cap} configured steps fit"
    elif fitting < 1:
        why = "not even one step fits: training 1 step (raise training.max_minutes)"
    else:
        why = f"{fitting} steps fit, of the {cap} configured"
    return steps, f"{measured}: {why} -> max_steps = {steps} (the learning-rate schedule spans these {steps} steps)"


def configured_step_cap(trainer) -> int:
    """The steps the run would take without a budget: ``max_steps``, or the epochs' worth of batches."""
    args = trainer.args
    if args.max_steps > 0:
        return int(args.max_steps)
    batches = len(trainer.get_train_dataloader())
    return max(1, math.ceil(args.num_train_epochs * max(batches // args.gradient_accumulation_steps, 1)))


def measure_seconds_per_step(trainer, model, time_limit: float = math.inf) -> tuple[float, int]:
    """Mean seconds of one optimizer step's forward and backward passes (every accumulated micro-batch),
    timed on the first batches of the training data, and how many steps were timed. Timing stops once
    it has taken ``time_limit`` seconds (then the warm-up step counts if no other was timed).
    Gradients are dropped afterwards."""
    model.train()
    batches = iter(trainer.get_train_dataloader())
    durations = []
    warmup_duration = None
    timing_started = _clock()
    for index in range(WARMUP_STEPS + TIMED_STEPS):
        try:
            batch = next(batches)
        except StopIteration:  # fewer batches than timing steps: reuse the epoch
            batches = iter(trainer.get_train_dataloader())
            batch = next(batches)
        inputs = trainer._prepare_inputs(batch)
        started = _clock()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        finished = _clock()
        if index >= WARMUP_STEPS:
            durations.append(finished - started)
        else:
            warmup_duration = finished - started
        del loss
        if finished - timing_started >= time_limit:
            break
    model.zero_grad(set_to_none=True)
    durations = durations or [warmup_duration]
    return sum(durations) / len(durations) * trainer.args.gradient_accumulation_steps, len(durations)


def apply_time_budget(trainer, model, max_minutes: float, seed: int, previous: dict[str, Any] | None) -> StepBudget:
    """Fix ``trainer.args.max_steps`` for a ``max_minutes`` budget (or reuse ``previous``, the budget
    chosen when a resumed run started, so that its schedule stays the one its checkpoints follow)."""
    if previous:
        budget = StepBudget(**previous)
        budget.reason = f"resuming: the {budget.steps} steps chosen when the run started ({budget.reason})"
    else:
        started = _clock()
        seconds_per_step, timed = measure_seconds_per_step(trainer, model, MAX_TIMING_SHARE * max_minutes * 60.0)
        cap = configured_step_cap(trainer)
        spent = _clock() - started
        steps, reason = choose_steps(max_minutes * 60.0, spent, seconds_per_step, cap, timed)
        budget = StepBudget(max_minutes, seconds_per_step, spent, cap, steps, reason)
        # The timing steps drew dropout masks: start training from the RNG state it would have had.
        from transformers import set_seed

        set_seed(seed)
    trainer.args.max_steps = budget.steps
    return budget
