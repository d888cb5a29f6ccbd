"""Where a run starts: fresh, resumed from a checkpoint, or refused because it would overwrite a run."""

from __future__ import annotations

import shutil
from pathlib import Path

from embedplug.train.config import ConfigError

RUN_FILE = "embedplug-run.json"  # written when a run starts: marks the folder as ours, holds the before metrics
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
_CHECKPOINT_PREFIX = "checkpoint-"


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``output_dir`` (as ``transformers``' ``get_last_checkpoint`` finds it)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    found = get_last_checkpoint(str(output_dir))
    return Path(found) if found else None


def _run_artifacts(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(
        path
        for path in output_dir.iterdir()
        if path.name.startswith(_CHECKPOINT_PREFIX) or path.name in {RUN_FILE, MODEL_DIR, METRICS_FILE}
    )


def resolve_start(output_dir: Path, resume: str | bool | None, overwrite: bool, act: bool = True) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a fresh run; :class:`ConfigError` if neither is allowed.

    ``resume`` is ``None`` (start fresh), ``True`` (the newest checkpoint in ``output_dir``) or a path.
    A fresh run refuses a folder holding a previous run unless ``overwrite``; with ``overwrite`` only
    that run's own files are deleted, never anything else in the folder. With ``act=False`` (the
    non-main ranks of a multi-process run) a fresh start neither refuses nor deletes: rank 0 does.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pick one")
    if resume is True:
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: {output_dir} holds no checkpoint-N folder to resume from")
        return checkpoint
    if resume:
        checkpoint = Path(resume)
        if not (checkpoint / "trainer_state.json").is_file():
            raise ConfigError(f"--resume {checkpoint}: not a checkpoint folder (no trainer_state.json in it)")
        return checkpoint
    if not act:
        return None
    artifacts = _run_artifacts(output_dir)
    if artifacts and not overwrite:
        names = ", ".join(path.name for path in artifacts[:5])
        raise ConfigError(
            f"{output_dir} already holds a run ({names}); pass --resume to continue it or --overwrite to start over"
        )
    for path in artifacts:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None
