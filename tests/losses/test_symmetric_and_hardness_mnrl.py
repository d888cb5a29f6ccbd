"""Symmetric (per-direction) and hardness-weighted MultipleNegativesRankingLoss, cached and not, and the
MultipleNegativesSymmetricRankingLoss drop-ins: fused, and equal to sentence-transformers 6.2 (value and
gradients, float32) over the option grid."""

from __future__ import annotations

import inspect
import itertools
import warnings

import pytest
import torch

import embedplug
from embedplug.losses import (
    CachedMultipleNegativesRankingLoss,
    CachedMultipleNegativesSymmetricRankingLoss,
    MultipleNegativesRankingLoss,
    MultipleNegativesSymmetricRankingLoss,
)

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_util = pytest.importorskip("sentence_transformers.util")

ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
SYMMETRIC = ("query_to_doc", "doc_to_query")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")
# (directions, partition_mode): every partition sentence-transformers accepts for the direction sets
# the options are used with.
PARTITIONS = [
    (("query_to_doc",), "joint"),
    (("query_to_doc",), "per_direction"),
    (SYMMETRIC, "joint"),
    (SYMMETRIC, "per_direction"),
    (("doc_to_query", "query_to_doc"), "per_direction"),
    (ALL_DIRECTIONS, "joint"),
]


def columns_of(n, num_columns, seed, dim=16):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=generator) for _ in range(num_columns)]


def assert_same_loss_and_grads(loss, grads, expected, expected_grads, gradient_floor=1e-3):
    """float32 1e-5; gradient entries relative to the largest one (never below gradient_floor), as
    they are sums of cancelling terms."""
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        atol = 1e-5 * max(expected_grad.abs().max().item(), gradient_floor)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=atol)


def parity(ours, theirs, columns, gradient_floor=1e-3):
    columns = [column.detach().requires_grad_() for column in columns]
    expected = theirs.compute_loss_from_embeddings(columns, None)
    expected_grads = torch.autograd.grad(expected, columns)
    loss = ours.compute_loss_from_embeddings(columns, None)
    assert_same_loss_and_grads(loss, torch.autograd.grad(loss, columns), expected, expected_grads, gradient_floor)


def cached_parity(ours, theirs, columns, mini_batch_size, gradient_floor=1e-3):
    """calculate_loss of both on the same mini-batch embeddings, gradients through with_backward."""
    results = []
    for loss_module in (theirs, ours):
        reps = [[chunk.clone().requires_grad_() for chunk in column.split(mini_batch_size)] for column in columns]
        loss = loss_module.calculate_loss(reps, None, with_backward=True)
        results.append((loss, [torch.cat([chunk.grad for chunk in column]) for column in reps]))
    (expected, expected_grads), (loss, grads) = results
    assert_same_loss_and_grads(loss, grads, expected, expected_grads, gradient_floor)


def option_grid():
    for (directions, partition), hardness, strength in itertools.product(
        PARTITIONS, (None, *HARDNESS_MODES), (0.0, 5.0)
    ):
        # A mode at strength 0 (no weighting, a warning) once per partition is enough.
        if (hardness is None and strength) or (strength == 0.0 and hardness not in (None, "all_negatives")):
            continue
        yield pytest.param(
            dict(directions=directions, partition_mode=partition, hardness_mode=hardness, hardness_strength=strength),
            id=f"{'+'.join(d.replace('_to_', '2') for d in directions)}-{partition}-{hardness}-{strength:g}",
        )


@pytest.mark.filterwarnings("ignore:hardness_mode=.*hardness_strength=0.0")
@pytest.mark.parametrize("options", list(option_grid()))
@pytest.mark.parametrize("num_columns", [2, 3, 5])
def test_parity_over_the_option_grid_runs_fused(options, num_columns):
    ours = MultipleNegativesRankingLoss(None, **options)
    assert ours.runs_fused() and ours.backend_info()["implementation"] == "fused"
    parity(ours, st_losses.MultipleNegativesRankingLoss(None, **options), columns_of(24, num_columns, seed=num_columns))


@pytest.mark.parametrize("options", [o for o in option_grid() if o.values[0]["hardness_strength"] != 0.0][::2])
@pytest.mark.parametrize("similarity_fct, scale", [(None, 20.0), ("dot", 1.0)])
def test_parity_with_dot_product_and_scales(options, similarity_fct, scale):
    options = dict(options, scale=scale)
    if similarity_fct == "dot":
        options["similarity_fct"] = st_util.dot_score
    columns = [column * 0.3 for column in columns_of(40, 3, seed=1)]
    ours = MultipleNegativesRankingLoss(None, **options)
    assert ours.runs_fused()
    parity(ours, st_losses.MultipleNegativesRankingLoss(None, **options), columns)


@pytest.mark.parametrize("hardness_mode", HARDNESS_MODES)
@pytest.mark.parametrize("directions, partition_mode", [(SYMMETRIC, "per_direction"), (ALL_DIRECTIONS, "joint")])
@pytest.mark.parametrize("num_columns", [2, 4])
def test_one_row(hardness_mode, directions, partition_mode, num_columns):
    options = dict(directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode, hardness_strength=5.0)
    # With pairs the per-direction loss is 0 and its gradient 0 up to the rounding of terms of size
    # scale: the gradient is compared at 1e-6 absolute.
    parity(MultipleNegativesRankingLoss(None, **options), st_losses.MultipleNegativesRankingLoss(None, **options),
           columns_of(1, num_columns, seed=2), gradient_floor=0.1)


@pytest.mark.parametrize("hardness_mode", [None, *HARDNESS_MODES])
def test_identical_anchor_and_positive(hardness_mode):
    anchor, negative = columns_of(20, 2, seed=3)
    positive = anchor.clone()
    positive[10:] = columns_of(10, 1, seed=4)[0]
    options = dict(directions=SYMMETRIC, partition_mode="per_direction", hardness_mode=hardness_mode,
                   hardness_strength=5.0 if hardness_mode else 0.0)
    ours, theirs = MultipleNegativesRankingLoss(None, **options), st_losses.MultipleNegativesRankingLoss(None, **options)
    parity(ours, theirs, [anchor, positive])
    parity(ours, theirs, [anchor, positive, negative])


@pytest.mark.filterwarnings("ignore:hardness_mode=.*hardness_strength=0.0")
@pytest.mark.parametrize("options", list(option_grid())[::3])
@pytest.mark.parametrize("mini_batch_size", [5, 32])
def test_cached_parity_with_mini_batches(options, mini_batch_size):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    ours = CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size, **options)
    assert ours.backend_info()["implementation"] == "fused"
    theirs = st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size, **options)
    cached_parity(ours, theirs, columns_of(23, 4, seed=mini_batch_size), mini_batch_size)


def symmetric_pairs():
    return [
        (MultipleNegativesSymmetricRankingLoss, st_losses.MultipleNegativesSymmetricRankingLoss),
        (CachedMultipleNegativesSymmetricRankingLoss, st_losses.CachedMultipleNegativesSymmetricRankingLoss),
    ]


def construct(loss_class, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return loss_class(*args, **kwargs)


@pytest.mark.parametrize("ours_class, theirs_class", symmetric_pairs())
def test_symmetric_drop_ins_match_signature_config_citation(ours_class, theirs_class):
    ours_signature = inspect.signature(ours_class.__init__).parameters
    theirs_signature = inspect.signature(theirs_class.__init__).parameters
    assert list(ours_signature) == list(theirs_signature)
    for name, parameter in theirs_signature.items():
        if name not in ("self", "model", "similarity_fct"):
            assert ours_signature[name].default == parameter.default, name
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    for options in ({}, {"scale": 10.0, "similarity_fct": st_util.dot_score}):
        ours, theirs = construct(ours_class, model, **options), construct(theirs_class, model, **options)
        assert ours.get_config_dict() == theirs.get_config_dict()
        assert ours.citation == theirs.citation
        assert ours.similarity_fct is theirs.similarity_fct
        assert ours.model is model
        assert ours.backend_info()["implementation"] == "fused"


@pytest.mark.parametrize("ours_class, theirs_class", symmetric_pairs())
def test_symmetric_drop_ins_warn_that_they_are_deprecated(ours_class, theirs_class):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.warns(DeprecationWarning, match=f"{theirs_class.__name__} is deprecated"):
        ours_class(model)


@pytest.mark.parametrize("num_columns", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 30])
def test_symmetric_loss_parity(num_columns, n):
    columns = columns_of(n, num_columns, seed=n + num_columns)
    floor = 0.1 if n == 1 else 1e-3  # one pair: a zero gradient up to rounding (see test_one_row)
    parity(construct(MultipleNegativesSymmetricRankingLoss, None), construct(st_losses.MultipleNegativesSymmetricRankingLoss, None),
           columns, gradient_floor=floor)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    cached_parity(
        construct(CachedMultipleNegativesSymmetricRankingLoss, model, mini_batch_size=7),
        construct(st_losses.CachedMultipleNegativesSymmetricRankingLoss, model, mini_batch_size=7),
        columns,
        mini_batch_size=7,
        gradient_floor=floor,
    )


@pytest.mark.parametrize("name", ["MultipleNegativesSymmetricRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss"])
def test_symmetric_losses_are_registered_built_ins(name):
    loss_class = embedplug.get_loss(name)
    assert loss_class is getattr(embedplug.losses, name)
