"""One training run end to end: checks, evaluation before, training, saving, evaluation after, report."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
import warnings
from pathlib import Path
from typing import Any

from embedplug.evaluation.report import format_comparison, read_json, write_json
from embedplug.evaluation.suites import run_evaluations
from embedplug.model_card import link_embedplug_losses_in
from embedplug.train.assemble import (
    build_sampler,
    build_trainer,
    check_sampler_on_data,
    load_guide,
    load_model,
    training_arguments,
)
from embedplug.train.config import TrainConfig
from embedplug.train.data import load_training_data
from embedplug.train.losses import (
    build_loss,
    check_data_fits_loss,
    check_loss_options,
    describe_backend,
    loss_class,
    warn_without_class_sampler,
)
from embedplug.train.launch import is_main_process, quiet_unless_main
from embedplug.train.mining import check_mining, start_mining
from embedplug.train.resume import METRICS_FILE, MODEL_DIR, RUN_FILE, resolve_start
from embedplug.train.time_budget import StepBudget, apply_time_budget


def run_training(
    config: TrainConfig, resume: str | bool | None = None, overwrite: bool = False, show_progress_bar: bool = True
) -> dict[str, Any]:
    """Train as ``config`` says and return what is written to ``<output_dir>/metrics.json``.

    Everything a user can get wrong (names, options, data, an existing run) is checked before the
    model is loaded, so mistakes fail in seconds, not after the first evaluation. Without
    ``show_progress_bar`` no progress bar is drawn by embedplug, the trainer, datasets or transformers
    (data loading, evaluation, training, loading and saving the model).
    """
    with _library_progress_bars(show_progress_bar):
        return _run_training(config, resume, overwrite, show_progress_bar)


@contextlib.contextmanager
def _library_progress_bars(show: bool) -> Iterator[None]:
    """Unless ``show``: ``datasets``' bars (reading files) and transformers' (loading and writing the model)
    off within the block, restored after. The trainer's own bars follow ``disable_tqdm`` (see
    :func:`~embedplug.train.assemble.training_arguments`)."""
    if show:
        yield
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    switches = [
        (datasets.is_progress_bar_enabled(), datasets.disable_progress_bars, datasets.enable_progress_bars),
        (
            transformers_logging.is_progress_bar_enabled(),
            transformers_logging.disable_progress_bar,
            transformers_logging.enable_progress_bar,
        ),
    ]
    for _, disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for enabled, _, enable in switches:
            if enabled:
                enable()


def _run_training(config: TrainConfig, resume, overwrite: bool, show_progress_bar: bool) -> dict[str, Any]:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    output_dir = Path(config.output_dir)
    # Under torchrun only rank 0 decides about, writes and evaluates the run folder; the other
    # ranks train (their batches differ) and wait for it in the trainer's collectives.
    main_process = is_main_process()
    checkpoint = resolve_start(output_dir, resume, overwrite, act=main_process)
    if not main_process:
        with quiet_unless_main():
            return _train_only(config, checkpoint)
    cls = loss_class(config)
    build_sampler(config)
    data = load_training_data(config)
    columns = check_mining(config, list(data.train.column_names), data.label_column)  # with the mined negatives
    check_data_fits_loss(cls, config, data.label_column, columns)
    warn_without_class_sampler(cls, config)
    check_loss_options(cls, config, len([name for name in columns if name != data.label_column]))
    # The arguments and the sampler on the real rows, as the trainer builds them (each raises a ConfigError).
    arguments = training_arguments(config, build_sampler(config), bool(data.evaluations), None, show_progress_bar)
    check_sampler_on_data(config, arguments, data.train, data.label_column)
    print(f"data: {data.description}")

    import transformers

    transformers.set_seed(config.seed)
    model = load_model(config.model.path, config.model.max_seq_length, config=config)
    loss = build_loss(cls, config, model, lambda: load_guide(config, model))
    backend = describe_backend(loss)
    print(f"loss: {config.loss.name} -> {backend}")
    timings["load_seconds"] = time.perf_counter() - started

    before = _before_metrics(config, model, data.evaluations, output_dir, checkpoint, show_progress_bar)
    timings["evaluate_before_seconds"] = time.perf_counter() - started - timings["load_seconds"]
    print(f"\nheld-out evaluation of the untouched model:\n{format_comparison(before)}\n")

    from embedplug.train.trainer_evaluator import HeldOutEvaluator

    evaluator = HeldOutEvaluator(data.evaluations, batch_size=config.evaluation.batch_size)
    refresher = start_mining(config, model, data.train)
    trainer = build_trainer(config, model, loss, refresher.dataset if refresher else data.train, evaluator,
                            show_progress_bar)
    if refresher:
        refresher.attach(trainer)
    if checkpoint is not None:
        print(f"resuming from {checkpoint}")
    train_started = time.perf_counter()
    budget = _apply_time_budget(config, trainer, model, output_dir, checkpoint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    timings["train_seconds"] = time.perf_counter() - train_started
    if refresher:  # mining is reported apart from training, including the refreshes that ran inside it
        refreshes = sum(mining_round.seconds for mining_round in refresher.rounds[1:])
        timings["train_seconds"] -= refreshes
        timings["mining_seconds"] = refresher.report()["seconds"]
    model.save(str(output_dir / MODEL_DIR))
    link_embedplug_losses_in(output_dir / MODEL_DIR)

    after_started = time.perf_counter()
    after = run_evaluations(model, data.evaluations, config.evaluation.batch_size, show_progress_bar)
    timings["evaluate_after_seconds"] = time.perf_counter() - after_started
    timings["total_seconds"] = time.perf_counter() - started
    report = {
        "before": before,
        "after": after,
        "loss": config.loss.name,
        "loss_backend": backend,
        "sampler": config.sampler.name or "(sentence-transformers default)",
        "global_step": result.global_step,
        "time_budget": dataclasses.asdict(budget) if budget else None,
        "mining": refresher.report() if refresher else None,
        "resumed_from": str(checkpoint) if checkpoint else None,
        "timings": timings,
        "config": config.to_dict(),
    }
    write_json(output_dir / METRICS_FILE, report)
    print(f"\nheld-out evaluation, before and after training:\n{format_comparison(before, after)}\n")
    print(f"loss backend: {backend}")
    print("wall time: " + ", ".join(f"{key.removesuffix('_seconds')} {value:.0f}s" for key, value in timings.items()))
    print(f"model: {output_dir / MODEL_DIR}\nmetrics: {output_dir / METRICS_FILE}")
    return report


def _train_only(config: TrainConfig, checkpoint) -> dict[str, Any]:
    """A non-main rank of a multi-process run: build the same model, loss and trainer, and train."""
    import transformers

    data = load_training_data(config)
    transformers.set_seed(config.seed)
    model = load_model(config.model.path, config.model.max_seq_length, config=config)
    loss = build_loss(loss_class(config), config, model, lambda: load_guide(config, model))
    refresher = start_mining(config, model, data.train)  # every rank mines its share, in step with rank 0
    trainer = build_trainer(config, model, loss, refresher.dataset if refresher else data.train, None)
    if refresher:
        refresher.attach(trainer)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return {"global_step": result.global_step, "resumed_from": str(checkpoint) if checkpoint else None}


def _before_metrics(config, model, evaluations, output_dir: Path, checkpoint, show_progress_bar: bool):
    """The untouched model's metrics: measured now, or, when resuming, read from the run file."""
    run_file = output_dir / RUN_FILE
    previous = read_json(run_file) if checkpoint is not None else None
    if previous and previous.get("before"):
        if previous.get("config") != config.to_dict():
            changed = sorted(_changed_keys(previous.get("config", {}), config.to_dict()))
            warnings.warn(
                f"resuming with a config that differs from the original run in: {', '.join(changed)}", stacklevel=3
            )
        print(f"(evaluation of the untouched model read from {run_file})")
        return previous["before"]
    before = run_evaluations(model, evaluations, config.evaluation.batch_size, show_progress_bar)
    write_json(run_file, {"config": config.to_dict(), "before": before})
    return before


def _apply_time_budget(config, trainer, model, output_dir: Path, checkpoint) -> StepBudget | None:
    """``training.max_minutes``: fix max_steps from the measured step time (a resumed run reuses the
    steps chosen when it started, recorded in the run file), and say what was chosen and why."""
    if "max_minutes" not in config.training:
        return None
    run_file = output_dir / RUN_FILE
    recorded = read_json(run_file) or {}
    previous = recorded.get("time_budget") if checkpoint is not None else None
    budget = apply_time_budget(trainer, model, config.training["max_minutes"], config.seed, previous)
    print(budget.describe())
    if previous is None:
        write_json(run_file, {**recorded, "time_budget": dataclasses.asdict(budget)})
    return budget


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed
