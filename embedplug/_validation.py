"""Input checks shared by the functional API and the drop-in losses: clear Python errors before any kernel runs."""

from __future__ import annotations

import functools
import math
import numbers
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch


def check_embeddings(embeddings: torch.Tensor, caller: str, name: str = "embeddings") -> None:
    """Raises TypeError/ValueError unless ``embeddings`` is a non-empty floating [N, D] tensor; messages
    call it ``name``."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{caller}: {name} must be 2-D [N, D], got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{caller}: {name} must be a floating-point tensor, got {embeddings.dtype}")
    if embeddings.shape[0] == 0:
        raise ValueError(f"{caller}: empty batch ({name} has N = 0 rows)")
    if embeddings.shape[1] == 0:
        raise ValueError(f"{caller}: {name} have D = 0 features")


def check_labels(labels: torch.Tensor, embeddings: torch.Tensor, caller: str) -> torch.Tensor:
    """Returns ``labels`` as flat int64 class ids [N], or raises a clear error naming the problem.

    ``labels``: one class label per row of ``embeddings`` [N, D], shape [N] or [N, 1] (what
    sentence-transformers' data collator gives), on the embeddings' device. Integer labels are the class
    ids. Floating-point labels are accepted as sentence-transformers' classes accept them (they compare
    labels with ``==``): rows share a class exactly when their labels are equal, so 0.5 and 0.7 are two
    classes and -0.0 and 0.0 one (see :func:`class_ids`). NaN labels are refused: a NaN equals no label,
    not even its own row's.
    """
    flat = check_label_tensor(labels, embeddings, caller)
    return class_ids(flat)


def check_label_tensor(labels: torch.Tensor, embeddings: torch.Tensor, caller: str) -> torch.Tensor:
    """The checks of :func:`check_labels`, returning the labels flattened to [N] with their own dtype
    (what is gathered across ranks before the ids are numbered: per-rank ids would not agree)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{caller}: labels must be a torch.Tensor of class labels, got {type(labels).__name__}")
    if labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{caller}: labels must be an integer or floating-point tensor of class labels, got {labels.dtype}")
    if labels.device != embeddings.device:
        raise ValueError(
            f"{caller}: labels are on {labels.device} but embeddings are on {embeddings.device}; move them to one device"
        )
    batch_size = embeddings.shape[0]
    if labels.numel() != batch_size:
        raise ValueError(
            f"{caller}: expects {batch_size} labels (one per example), but got {labels.numel()} labels "
            f"with shape {tuple(labels.shape)}"
        )
    if not (labels.dim() == 1 or (labels.dim() == 2 and labels.shape[1] == 1)):
        raise ValueError(
            f"{caller}: labels must have shape [N] or [N, 1] (one class label per row), got shape "
            f"{tuple(labels.shape)} for N = {batch_size} rows"
        )
    flat = labels.reshape(-1)
    if flat.is_floating_point() and not torch.compiler.is_compiling() and bool(torch.isnan(flat).any()):
        raise ValueError(
            f"{caller}: labels contain NaN at {int(torch.isnan(flat).sum())} row(s); a NaN label equals no label, "
            "not even its own, so those rows have no class"
        )
    return flat


def class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Flat [N] labels as int64 class ids: integers as they are; floats numbered by exact equality.

    Equal values get one id and different values different ids (ids follow the sorted order of the
    values), so the masks built from the ids are those of ``labels[:, None] == labels[None, :]``,
    without the N x N matrix and without rounding (0.5 and 0.7 stay apart). A sort and a cumulative
    sum: static shapes, so the path compiles too.
    """
    if not labels.is_floating_point():
        return labels.to(torch.int64)
    sorted_values, order = torch.sort(labels)
    # A new class starts wherever a sorted value differs from the one before it (-0.0 == 0.0).
    starts = torch.zeros_like(sorted_values, dtype=torch.int64)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    ids = torch.empty_like(starts)
    ids[order] = torch.cumsum(starts, dim=0)
    return ids


# ---------------------------------------------------------------------------------------------
# Devices: every tensor an op takes on one device, checked before dispatch (a tensor on another
# device would otherwise reach the fake kernel and come back as an uninitialised tensor).


def check_same_device(caller: str, **tensors: torch.Tensor | None) -> None:
    """Raises ValueError naming both devices unless every given tensor (None skipped) is on one device."""
    first_name, first_device = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if first_device is None:
            first_name, first_device = name, tensor.device
        elif tensor.device != first_device:
            raise ValueError(
                f"{caller}: {name} is on {tensor.device} but {first_name} is on {first_device}; "
                "move every input to one device"
            )


# ---------------------------------------------------------------------------------------------
# Hyper-parameters: one check each, shared by the loss classes, the functional forms and the
# train config (which builds the classes). Messages name the argument and what it takes.


def _real(value, name: str, caller: str) -> float:
    """``value`` as a float if it is a real number (a bool is not), else a TypeError naming ``name``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{caller}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_finite_number(value, name: str, caller: str) -> float:
    """A finite real number (margins): NaN or Inf would make the fused and reference paths disagree."""
    number = _real(value, name, caller)
    if not math.isfinite(number):
        raise ValueError(f"{caller}: {name} must be a finite number, got {number}")
    return number


def check_positive_number(value, name: str, caller: str) -> float:
    """A finite real number > 0 (temperatures, scales)."""
    number = _real(value, name, caller)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{caller}: {name} must be a finite number > 0, got {number}")
    return number


def check_non_negative_number(value, name: str, caller: str) -> float:
    """A finite real number >= 0 (hardness_strength)."""
    number = _real(value, name, caller)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{caller}: {name} must be a finite number >= 0, got {number}")
    return number


def check_positive_int(value, name: str, caller: str) -> int:
    """An integer >= 1 (mini_batch_size); 2.5, "32" and True are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{caller}: {name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{caller}: {name} must be a positive integer, got {value}")
    return int(value)


def check_distance(distance, name: str, caller: str) -> None:
    """A distance name or a callable (``None`` or ``3`` fail here, not deep inside the loss)."""
    if isinstance(distance, str):
        from embedplug.distances import canonical_distance

        try:
            canonical_distance(distance)
        except ValueError as error:
            raise ValueError(f"{caller}: {name}: {error}") from None
    elif not callable(distance):
        raise TypeError(
            f"{caller}: {name} must be a distance name ('euclidean', 'squared_euclidean', 'cosine') or a callable "
            f"mapping [N, D] embeddings to an [N, N] distance matrix, got {distance!r} ({type(distance).__name__})"
        )


def check_distance_matrix(matrix, embeddings: torch.Tensor, caller: str) -> torch.Tensor:
    """The output of a user distance callable: an [N, N] floating tensor on the embeddings' device."""
    n = embeddings.shape[0]
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"{caller}: the distance callable must return a torch.Tensor, got {type(matrix).__name__}")
    if tuple(matrix.shape) != (n, n):
        raise ValueError(
            f"{caller}: the distance callable must map [N, D] embeddings to an [N, N] = [{n}, {n}] distance matrix, "
            f"got shape {tuple(matrix.shape)}"
        )
    if not matrix.is_floating_point():
        raise TypeError(f"{caller}: the distance callable must return a floating-point matrix, got {matrix.dtype}")
    check_same_device(caller, embeddings=embeddings, distance_matrix=matrix)
    return matrix


def checked_similarity(similarity: Callable, caller: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``similarity`` wrapped so that its output is checked: ([R, D], [C, D]) must give a floating [R, C] tensor.

    A user's similarity function with the wrong output (a row-wise [R] vector, a transposed or broadcast
    matrix) otherwise fails deep in the loss with an IndexError, or not at all.
    """

    @functools.wraps(similarity)
    def checked(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        matrix = similarity(rows, columns)
        expected = (rows.shape[0], columns.shape[0])
        if not isinstance(matrix, torch.Tensor):
            raise TypeError(f"{caller}: the similarity function must return a torch.Tensor, got {type(matrix).__name__}")
        if tuple(matrix.shape) != expected:
            raise ValueError(
                f"{caller}: the similarity function must map [R, D] and [C, D] embeddings to an [R, C] similarity "
                f"matrix; for [{expected[0]}, D] and [{expected[1]}, D] it returned shape {tuple(matrix.shape)}"
            )
        if not matrix.is_floating_point():
            raise TypeError(f"{caller}: the similarity function must return a floating-point matrix, got {matrix.dtype}")
        return matrix

    return checked


def check_column_count(embeddings, minimum: int, maximum: int | None, caller: str) -> None:
    """``compute_loss_from_embeddings``' list of columns: between ``minimum`` and ``maximum`` tensors."""
    if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, (list, tuple)):
        raise TypeError(
            f"{caller}: embeddings must be a list of [N, D] tensors (one per input column), got {type(embeddings).__name__}"
        )
    count = len(embeddings)
    if count < minimum or (maximum is not None and count > maximum):
        expected = f"exactly {minimum}" if maximum == minimum else (
            f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
        )
        raise ValueError(f"{caller}: expects {expected} embedding column(s), got {count}")


def check_mnrl_options(
    caller: str,
    scale,
    directions,
    partition_mode: str,
    hardness_mode: str | None,
    hardness_strength,
    valid_directions: tuple[str, ...],
    partition_modes: tuple[str, ...],
    hardness_modes: tuple,
) -> None:
    """MultipleNegativesRankingLoss' options (sentence-transformers 6.2's rules and wording, plus
    finiteness), for the class, its cached variant and the functional form alike."""
    if not isinstance(scale, bool) and isinstance(scale, numbers.Real) and not scale > 0:
        raise ValueError(f"{caller}: Scale must be a positive value (scale), got {scale}.")
    check_positive_number(scale, "scale", caller)
    directions = tuple(directions)
    if not directions:
        raise ValueError(f"{caller}: At least one direction must be specified (directions).")
    if not set(directions).issubset(valid_directions):
        raise ValueError(
            f"{caller}: Invalid directions: {set(directions) - set(valid_directions)}. Valid: {set(valid_directions)}"
        )
    if "query_to_doc" not in directions:
        raise ValueError(f"{caller}: 'query_to_doc' direction is required (contains the positive pair).")
    if partition_mode not in partition_modes:
        raise ValueError(f"{caller}: partition_mode must be 'joint' or 'per_direction', got {partition_mode}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError(
            f"{caller}: partition_mode='per_direction' requires every direction's candidate pool to include the "
            "positive pair. 'query_to_query' and 'doc_to_doc' only contain same-type similarities and never include "
            "the positive, making the per-direction loss ill-defined. Use partition_mode='joint' instead."
        )
    if hardness_mode not in hardness_modes:
        raise ValueError(f"{caller}: hardness_mode must be one of {set(hardness_modes)}, got {hardness_mode!r}")
    if not isinstance(hardness_strength, bool) and isinstance(hardness_strength, numbers.Real) and hardness_strength < 0:
        raise ValueError(f"{caller}: hardness_strength must be non-negative, got {hardness_strength}.")
    check_non_negative_number(hardness_strength, "hardness_strength", caller)


def check_finite_rows(caller: str, **tensors: torch.Tensor | None) -> None:
    """Warn when guide embeddings have NaN/Inf rows, and go on as sentence-transformers does.

    sentence-transformers' GISTEmbedLoss trains through such a guide: every guide similarity involving
    a non-finite row is NaN, and its ``similarity > threshold`` drops no candidate on a NaN. The
    warning's text is the same on every call, so Python's default filter shows it once per call site.
    Skipped under torch.compile, where a data-dependent branch would break the graph.
    """
    if torch.compiler.is_compiling():
        return
    bad = [name for name, tensor in tensors.items() if tensor is not None and not bool(torch.isfinite(tensor.detach()).all())]
    if bad:
        warnings.warn(
            f"{caller}: {' and '.join(bad)} have rows with NaN or Inf entries (check the guide model's outputs); "
            "the guide similarities of those rows are NaN and drop no candidate, as in sentence-transformers",
            RuntimeWarning,
            stacklevel=3,
        )


def warn_non_finite_rows(loss_module, loss: torch.Tensor, embeddings) -> None:
    """Once per loss instance: when the loss is not finite, warn with the number of non-finite rows.

    The loss value stays NaN (as in sentence-transformers); on the finite fast path the cost is one
    scalar check, and the rows are counted only when the loss is already non-finite.
    """
    if getattr(loss_module, "_warned_non_finite_rows", False) or torch.compiler.is_compiling():
        return
    if not isinstance(loss, torch.Tensor) or bool(torch.isfinite(loss.detach()).all()):
        return
    columns = [embeddings] if isinstance(embeddings, torch.Tensor) else list(embeddings)
    bad_rows = sum(int((~torch.isfinite(column.detach())).any(dim=-1).sum()) for column in columns)
    total_rows = sum(column.shape[0] for column in columns)
    if not bad_rows:
        return
    loss_module._warned_non_finite_rows = True
    warnings.warn(
        f"{type(loss_module).__name__}: the loss is {loss.detach().float().reshape(-1)[0].item()} because {bad_rows} "
        f"of the {total_rows} embedding rows contain NaN or Inf (the model's outputs diverged or the input is bad); "
        "this is warned once per loss instance",
        RuntimeWarning,
        stacklevel=3,
    )


def _input_rows(values) -> list[torch.Tensor]:
    """The [R, D] floating tensors among a call's arguments, lists of columns included."""
    found = []
    for value in values:
        if isinstance(value, (list, tuple)):
            found += _input_rows(value)
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 2:
            found.append(value)
    return found


_LossFunction = TypeVar("_LossFunction", bound=Callable[..., torch.Tensor])


def warns_non_finite_input(function: _LossFunction) -> _LossFunction:
    """Decorates a functional loss: when it returns a non-finite loss and some input rows are NaN/Inf, warn.

    The loss stays NaN, as the loss classes leave it (:func:`warn_non_finite_rows`); the warning names
    the function and how many of the input rows (every [R, D] floating argument, guide columns
    included) are not finite. It is raised at the user's call site on every such call, so Python's
    default filter shows it once per call site and message. Calls from embedplug's own modules (the loss
    classes, which warn once per instance) are not warned about here. On a finite loss the cost is one
    scalar check; nothing runs under ``torch.compile``.
    """

    @functools.wraps(function)
    def checked(*args, **kwargs):
        loss = function(*args, **kwargs)
        if torch.compiler.is_compiling() or not isinstance(loss, torch.Tensor):
            return loss
        if bool(torch.isfinite(loss.detach()).all()):
            return loss
        if sys._getframe(1).f_globals.get("__name__", "").startswith("embedplug."):
            return loss  # an embedplug loss class: it reports the rows itself, once per instance
        columns = _input_rows([*args, *kwargs.values()])
        bad_rows = sum(int((~torch.isfinite(column.detach())).any(dim=-1).sum()) for column in columns)
        if bad_rows:
            warnings.warn(
                f"{function.__name__}: the loss is {loss.detach().float().reshape(-1)[0].item()} because {bad_rows} "
                f"of the {sum(column.shape[0] for column in columns)} input rows contain NaN or Inf",
                RuntimeWarning,
                stacklevel=2,
            )
        return loss

    return checked  # type: ignore[return-value]
