"""Where sentence-transformers 6.2 and 6.3 differ, embedplug gives the installed release's numbers.

- Batch triplet family, cosine distance: 6.3 clamps ``1 - cos`` at 0 and zeroes the diagonal, which
  matters for batches holding (near-)parallel rows, e.g. the same text twice.
- GIST and cached GIST: 6.3 always masks each row's own anchor-anchor and positive-positive entry,
  also in the gathered (multi-device) layout, where only the row's own gathered column is masked.

Each case is compared with the installed release's own class; ``st_version=`` runs the other
release's rules, which must differ on these inputs (or the case would prove nothing).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from _support import loss_and_grad

import embedplug.functional as F
from embedplug.functional._pairwise_path import kernel_or_matrix
from embedplug.losses import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
)
from embedplug.st_version import current

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_gist_module = pytest.importorskip("sentence_transformers.sentence_transformer.losses.gist_embed")
st_cached_gist_module = pytest.importorskip("sentence_transformers.sentence_transformer.losses.cached_gist_embed")
OTHER_RELEASE = "6.2" if current().version == "6.3" else "6.3"

LOSSES = {
    "BatchHardTripletLoss": (BatchHardTripletLoss, F.batch_hard_triplet_loss, [0.0, 1.0]),
    "BatchSemiHardTripletLoss": (BatchSemiHardTripletLoss, F.batch_semi_hard_triplet_loss, [0.0, 1.0]),
    "BatchAllTripletLoss": (BatchAllTripletLoss, F.batch_all_triplet_loss, [0.0, 0.5]),
    "BatchHardSoftMarginTripletLoss": (BatchHardSoftMarginTripletLoss, F.batch_hard_soft_margin_triplet_loss, [None]),
}


def duplicated_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Small-integer rows with many exact duplicates and parallel pairs (cos = 1 up to rounding)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).float()
    embeddings[::5] = 2 * embeddings[1::5]  # parallel, not equal
    return embeddings, torch.randint(0, 5, (40,), generator=generator)


def margin_options(margin):
    return {} if margin is None else {"margin": margin}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", LOSSES)
def test_cosine_batch_losses_equal_the_installed_release_on_duplicate_rows(name, seed):
    ours, _, margins = LOSSES[name]
    theirs = getattr(st_losses, name)
    cosine = st_losses.BatchHardTripletLossDistanceFunction.cosine_distance
    embeddings, labels = duplicated_batch(seed)
    for margin in margins:
        expected_loss, expected_grad = loss_and_grad(theirs, embeddings, labels, cosine, **margin_options(margin))
        loss, grad = loss_and_grad(ours, embeddings, labels, cosine, **margin_options(margin))
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6, msg=f"margin {margin}")
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6, msg=f"margin {margin}")


def test_the_releases_differ_on_these_batches():
    # Semi-hard mining reads the distances' exact order: a clamped 0 against a -1e-7 picks another
    # negative. The other release must give other gradients here, or the test above proves nothing.
    embeddings, labels = duplicated_batch(0)
    results = {}
    for release in ("6.2", "6.3"):
        x = embeddings.clone().requires_grad_()
        loss = F.batch_semi_hard_triplet_loss(x, labels, margin=0.0, distance="cosine", st_version=release)
        results[release] = torch.autograd.grad(loss, x)[0]
    assert (results["6.2"] - results["6.3"]).abs().max() > 1e-5


def test_the_kernel_runs_unless_a_near_parallel_pair_needs_the_clamped_matrix():
    generator = torch.Generator().manual_seed(3)
    spread = torch.randn(64, 16, generator=generator)
    assert kernel_or_matrix(spread, "cosine", "test", st_version="6.3") == ("cosine", None)
    with_copy = torch.cat([spread, spread[:1] * 3.0])
    name, matrix = kernel_or_matrix(with_copy, "cosine", "test", st_version="6.3")
    assert name is None and matrix.shape == (65, 65)
    assert (matrix >= 0).all() and (matrix.diagonal() == 0).all()
    assert kernel_or_matrix(with_copy, "cosine", "test", st_version="6.2") == ("cosine", None)
    assert kernel_or_matrix(with_copy, "euclidean", "test", st_version="6.3") == ("euclidean", None)


def test_embedplugs_cosine_distance_function_is_the_installed_releases():
    from embedplug.losses import BatchHardTripletLossDistanceFunction as Ours

    embeddings, _ = duplicated_batch(0)
    theirs = st_losses.BatchHardTripletLossDistanceFunction.cosine_distance(embeddings)
    torch.testing.assert_close(Ours.cosine_distance(embeddings), theirs, rtol=0, atol=0)


# GIST ---------------------------------------------------------------------------------------------


def make_gist_columns(rows: int, columns: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    student = [torch.randn(rows, 16, generator=generator) for _ in range(columns)]
    guide = [torch.randn(rows, 8, generator=generator) for _ in range(columns)]
    student[1] = student[0] + 0.6 * student[1]
    guide[1] = guide[0] + 0.6 * guide[1]
    return student, guide


def bare_st_loss(module, class_name: str, **settings):
    """A sentence-transformers GIST loss object with its settings but no models (embedding bypassed)."""
    loss_class = getattr(module, class_name)
    loss = loss_class.__new__(loss_class)
    torch.nn.Module.__init__(loss)
    defaults = dict(temperature=0.05, margin_strategy="absolute", margin=0.0, contrast_anchors=True,
                    contrast_positives=True, gather_across_devices=False, must_retokenize=False, show_progress_bar=False)
    loss.__dict__.update({**defaults, **settings})
    loss.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
    loss.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    return loss


GIST_OPTIONS = [
    {"margin": 0.05},
    {"margin": -0.3},
    {"margin_strategy": "relative", "margin": -0.5},
    {"margin": -0.3, "contrast_anchors": False},
]


@pytest.mark.parametrize("options", GIST_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("columns", [2, 3])
@pytest.mark.parametrize("rank", [0, 1, 2])
def test_gathered_gist_equals_the_installed_release(rank, columns, options):
    # Three "ranks" of 8 rows: sentence-transformers' gathered forward on rank `rank`, with its
    # all-gather replaced by the global columns, against embedplug's gathered layout (offset).
    world_size, batch = 3, 8
    student, guide = make_gist_columns(world_size * batch, columns, seed=rank + 10 * columns)
    rows = slice(rank * batch, (rank + 1) * batch)
    leaves = [column.clone().requires_grad_() for column in student]
    local = [leaves[0][rows]] + [leaf[rows] for leaf in leaves[1:]]
    guide_local = [column[rows] for column in guide]
    gathered = {id(t): g for t, g in zip(local[1:] + guide_local[1:], leaves[1:] + guide[1:])}
    loss = bare_st_loss(st_gist_module, "GISTEmbedLoss", gather_across_devices=True, **options)
    student_model, guide_model = object(), object()
    loss.__dict__.update(model=student_model, guide=guide_model)
    with (
        mock.patch.object(st_gist_module, "embed_columns",
                          lambda model, _: list(local if model is student_model else guide_local)),
        mock.patch.object(st_gist_module, "all_gather_with_grad", lambda tensor: gathered[id(tensor)]),
        mock.patch.object(st_gist_module, "get_rank", lambda: rank),
    ):
        expected = loss.forward([{}] * columns, None)
    expected_grads = torch.autograd.grad(expected, leaves)

    ours_leaves = [column.clone().requires_grad_() for column in student]

    def ours(st_version=None):
        return F.gist_embed_loss(
            ours_leaves[0][rows], ours_leaves[1], ours_leaves[2:], guide_anchor=guide[0][rows], guide_positive=guide[1],
            guide_negatives=guide[2:], temperature=0.05, offset=rank * batch, st_version=st_version, **options,
        )

    value = ours()
    grads = torch.autograd.grad(value, ours_leaves, allow_unused=True)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    if options["margin"] < 0:  # the guide keeps the self entries: only the release's rule differs
        assert not torch.allclose(ours(OTHER_RELEASE), expected, rtol=1e-3)


@pytest.mark.parametrize("options", GIST_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cached_gist_mini_batched_loss_stage_equals_the_installed_release(options):
    # sentence-transformers' cached GIST masks the self entries chunk by chunk (begin + rows); the
    # fused loss computes the batch at once. 22 rows in mini-batches of 5: an uneven last chunk.
    from embedplug.losses import CachedGISTEmbedLoss

    student, guide = make_gist_columns(22, 3, seed=7)

    def split(column):
        return list(column.split(5))

    theirs = bare_st_loss(st_cached_gist_module, "CachedGISTEmbedLoss", mini_batch_size=5, **options)
    reps = [[piece.clone().requires_grad_() for piece in split(column)] for column in student]
    expected = theirs.calculate_loss(reps, [split(column) for column in guide], with_backward=True)
    # The guide's embeddings are handed to calculate_loss, so no guide model is needed here.
    ours = CachedGISTEmbedLoss(torch.nn.Sequential(torch.nn.Identity()), None, temperature=0.05, mini_batch_size=5, **options)
    our_reps = [[piece.clone().requires_grad_() for piece in split(column)] for column in student]
    value = ours.calculate_loss(our_reps, [split(column) for column in guide], with_backward=True)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5)
    for our_column, their_column in zip(our_reps, reps):
        for ours_piece, theirs_piece in zip(our_column, their_column):
            torch.testing.assert_close(ours_piece.grad, theirs_piece.grad, rtol=1e-4, atol=1e-6)


def test_near_parallel_check_finds_exactly_the_parallel_pairs():
    from embedplug.functional._pairwise_path import has_near_parallel_pair

    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert not has_near_parallel_pair(x) and not has_near_parallel_pair(x.float()) and not has_near_parallel_pair(x[:1])
    for scale in (1.0, 2.0, 0.5):
        parallel = x.clone()
        parallel[3] = scale * parallel[7]
        assert has_near_parallel_pair(parallel) and has_near_parallel_pair(parallel.float())
