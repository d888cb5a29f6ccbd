"""Which process of a torchrun launch this is, read from the variables torchrun sets.

``embedplug train`` under ``torchrun --nproc-per-node N`` runs one process per rank; the trainer
(accelerate) joins them into a process group (gloo on CPU, nccl on GPUs). These helpers answer
before that group exists, so the run folder is checked and written by rank 0 alone.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator


def world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """``RANK`` as torchrun sets it; 0 outside a launch."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Drops the stdout of a non-main rank (its progress lines would repeat rank 0's)."""
    if is_main_process():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
