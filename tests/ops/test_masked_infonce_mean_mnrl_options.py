"""embedplug::masked_infonce_mean's MultipleNegativesRankingLoss options (per-direction partitions,
hardness weighting): the fused kernel vs the pure-torch reference, the hardness rule vs
sentence-transformers' masks, float64 gradcheck, opcheck, bad options."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from _support import requires_extension

from embedplug.ops import layer, masked_infonce_mean
from embedplug.reference.masked_infonce import hardness_mask
from embedplug.reference.masked_infonce import masked_infonce_mean as reference_mean

fused_mean_op = torch.ops.embedplug.masked_infonce_mean if hasattr(torch.ops.embedplug, "masked_infonce_mean") else None

HARDNESS_MODES = ("none", "in_batch_negatives", "hard_negatives", "all_negatives")
# (anchor_anchor, positive_anchor, doc_to_doc): the op's blocks beside query-to-doc, as MNRL's
# directions query_to_query, doc_to_query and doc_to_doc set them.
BLOCK_SETS = {
    "q2d": (False, False, False),
    "q2d+d2q": (False, True, False),
    "all": (True, True, True),
}


def make_inputs(n, columns, dim, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=1)
    candidates = torch.randn(n * columns, dim, generator=generator, dtype=dtype)
    # Positives correlated with their anchors, so the softmax is not flat.
    candidates[:n] += anchors
    return anchors, F.normalize(candidates, dim=1)


def mnrl_arguments(anchors, candidates, block_set, scale=20.0):
    anchor_anchor, positive_anchor, doc_to_doc = BLOCK_SETS[block_set]
    columns = candidates.shape[0] if doc_to_doc else 0
    return (anchors, candidates, None, None, scale, "none", 0.0, anchor_anchor, positive_anchor, columns, True)


def assert_matches_reference(arguments, mnrl_options, rtol, atol):
    anchors, candidates = (t.detach().requires_grad_() for t in arguments[:2])
    arguments = (anchors, candidates, *arguments[2:])
    loss, grad_anchors, grad_candidates = fused_mean_op(*arguments, True, *mnrl_options)
    expected = reference_mean(*arguments, *mnrl_options)
    torch.testing.assert_close(loss, expected, rtol=rtol, atol=atol)
    for fused_grad, reference_grad in zip((grad_anchors, grad_candidates), torch.autograd.grad(expected, (anchors, candidates))):
        gradient_atol = max(atol, rtol * reference_grad.abs().max().item())
        torch.testing.assert_close(fused_grad, reference_grad, rtol=rtol, atol=gradient_atol)
    # Without compute_grad the same value.
    assert torch.equal(fused_mean_op(*arguments, False, *mnrl_options)[0], loss)


def option_grid():
    for block_set, partition, hardness, strength in itertools.product(
        BLOCK_SETS, ("joint", "per_direction"), HARDNESS_MODES, (0.0, 5.0)
    ):
        if hardness == "none" and strength:
            continue
        yield pytest.param(block_set, partition, hardness, strength, id=f"{block_set}-{partition}-{hardness}-{strength:g}")


@requires_extension
@pytest.mark.parametrize("block_set, partition, hardness, strength", list(option_grid()))
@pytest.mark.parametrize("n, columns", [(1, 1), (2, 3), (7, 2), (129, 1), (300, 3)])
def test_fused_matches_reference_float64(block_set, partition, hardness, strength, n, columns):
    if n == 1 and block_set == "all" and partition == "per_direction":
        pytest.skip("one row: the anchor-anchor softmax has no entry left (a -inf log-normaliser by definition)")
    anchors, candidates = make_inputs(n, columns, 12, torch.float64, seed=n * 10 + columns)
    assert_matches_reference(
        mnrl_arguments(anchors, candidates, block_set), (partition, hardness, strength), rtol=1e-10, atol=1e-12
    )


@requires_extension
@pytest.mark.parametrize("block_set, partition, hardness, strength", list(option_grid()))
def test_fused_matches_reference_float32(block_set, partition, hardness, strength):
    # 300 rows x 4 candidate columns: several 256-column tiles, strips of 128 rows and a ragged end.
    anchors, candidates = make_inputs(300, 4, 32, torch.float32, seed=11)
    assert_matches_reference(
        mnrl_arguments(anchors, candidates, block_set, scale=50.0), (partition, hardness, strength), rtol=1e-5, atol=1e-6
    )


@requires_extension
@pytest.mark.parametrize("hardness", HARDNESS_MODES[1:])
@pytest.mark.parametrize("partition", ["joint", "per_direction"])
def test_hardness_with_guide_filtering_matches_reference(hardness, partition):
    # Not a sentence-transformers combination, but the op accepts it: the hardness term goes on the
    # entries the guide keeps, the guide compares unweighted similarities.
    anchors, candidates = make_inputs(150, 2, 16, torch.float64, seed=5)
    for guides, strategy in (((None, None), "absolute"), (make_inputs(150, 2, 6, torch.float64, seed=6), "relative")):
        arguments = (anchors, candidates, *guides, 20.0, strategy, 0.05, True, False, 150, False)
        assert_matches_reference(arguments, (partition, hardness, 3.0), rtol=1e-10, atol=1e-12)


def sentence_transformers_penalised(hardness_mode, n, num_docs):
    """[N, N * num_docs] bool: the entries sentence-transformers 6.2 adds its penalty to (its own masks)."""
    own_doc_mask = torch.eye(n, dtype=torch.bool).repeat(1, num_docs)
    if hardness_mode == "hard_negatives":
        excluded = ~own_doc_mask
        excluded[:, :n] = True
    elif hardness_mode == "in_batch_negatives":
        excluded = own_doc_mask
    else:
        excluded = own_doc_mask.clone()
        excluded[:, n:] = False
    return ~excluded


@pytest.mark.parametrize("hardness_mode", HARDNESS_MODES[1:])
@pytest.mark.parametrize("n, num_docs", [(1, 1), (1, 3), (5, 1), (5, 4)])
def test_hardness_rule_selects_sentence_transformers_entries(hardness_mode, n, num_docs):
    assert torch.equal(hardness_mask(hardness_mode, n, n * num_docs), sentence_transformers_penalised(hardness_mode, n, num_docs))


@requires_extension
@pytest.mark.parametrize("hardness_mode", HARDNESS_MODES[1:])
def test_hardness_term_by_hand(hardness_mode):
    # Two rows, one hard-negative column, orthonormal-ish vectors with known dot products: the
    # expected loss is written out from the rule, not from the reference.
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    candidates = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    scale, strength = 2.0, 3.0
    similarity = anchors @ candidates.T
    weighted = sentence_transformers_penalised(hardness_mode, 2, 2)
    logits = scale * similarity + strength * similarity * weighted
    expected = (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    loss, _, _ = fused_mean_op(anchors, candidates, None, None, scale, "none", 0.0, False, False, 0, True, False,
                               "joint", hardness_mode, strength)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@requires_extension
def test_per_direction_by_hand():
    anchors, candidates = make_inputs(6, 2, 4, torch.float64, seed=3)
    scale = 7.0
    query_to_doc = scale * anchors @ candidates.T
    doc_to_query = scale * candidates[:6] @ anchors.T
    log_normalizer = (torch.logsumexp(query_to_doc, 1) + torch.logsumexp(doc_to_query, 1)) / 2
    expected = (log_normalizer - query_to_doc.diagonal()).mean()
    loss, _, _ = fused_mean_op(anchors, candidates, None, None, scale, "none", 0.0, False, True, 0, True, False,
                               "per_direction")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("anchor_anchor, doc_to_doc", [(False, False), (True, True)])
def test_gradcheck_float64_per_direction(anchor_anchor, doc_to_doc):
    anchors, candidates = make_inputs(9, 3, 5, torch.float64, seed=3)

    def loss_of(a, c):
        return masked_infonce_mean(a, c, scale=3.0, anchor_anchor=anchor_anchor, positive_anchor=True,
                                   positive_candidate_columns=27 if doc_to_doc else 0, partition_mode="per_direction")

    assert torch.autograd.gradcheck(loss_of, (anchors.requires_grad_(), candidates.requires_grad_()), eps=1e-6, atol=1e-6)


@requires_extension
@pytest.mark.parametrize("partition", ["joint", "per_direction"])
@pytest.mark.parametrize("hardness", HARDNESS_MODES[1:])
def test_gradcheck_float64_with_the_hardness_term_frozen(partition, hardness):
    # stop_grad: the hardness term is a constant to the gradient, so finite differences see the
    # loss with the term frozen at the point, while the op's value still carries it there.
    anchors, candidates = make_inputs(9, 3, 5, torch.float64, seed=3)
    scale, strength = 3.0, 4.0
    frozen_term = strength * (anchors @ candidates.T) * hardness_mask(hardness, 9, 27)

    def frozen_loss(a, c):
        query_to_doc = scale * a @ c.T + frozen_term
        doc_to_query = scale * c[:9] @ a.T
        if partition == "joint":
            log_normalizer = torch.logsumexp(torch.cat([query_to_doc, doc_to_query], dim=1), dim=1)
        else:
            log_normalizer = (torch.logsumexp(query_to_doc, dim=1) + torch.logsumexp(doc_to_query, dim=1)) / 2
        return (log_normalizer - query_to_doc.diagonal()).mean()

    assert torch.autograd.gradcheck(frozen_loss, (anchors.clone().requires_grad_(), candidates.clone().requires_grad_()))
    a, c = anchors.clone().requires_grad_(), candidates.clone().requires_grad_()
    loss = masked_infonce_mean(a, c, scale=scale, positive_anchor=True, partition_mode=partition,
                               hardness_mode=hardness, hardness_strength=strength)
    torch.testing.assert_close(loss, frozen_loss(anchors, candidates), rtol=1e-12, atol=1e-12)
    expected_grads = torch.autograd.grad(frozen_loss(a, c), (a, c))
    for grad, expected in zip(torch.autograd.grad(loss, (a, c)), expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


@requires_extension
@pytest.mark.parametrize("mnrl_options", [(), ("per_direction",), ("joint", "all_negatives", 5.0), ("per_direction", "hard_negatives", 2.0)])
@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck(mnrl_options, compute_grad):
    anchors, candidates = make_inputs(20, 2, 8, torch.float32, seed=4)
    arguments = mnrl_arguments(anchors.requires_grad_(compute_grad), candidates.requires_grad_(compute_grad), "q2d+d2q")
    torch.library.opcheck(fused_mean_op.default, (*arguments, compute_grad, *mnrl_options))


@requires_extension
def test_bad_options_raise_clear_errors():
    anchors, candidates = make_inputs(4, 1, 3, torch.float32, seed=0)
    arguments = mnrl_arguments(anchors, candidates, "q2d")
    with pytest.raises(RuntimeError, match="unknown partition_mode 'mixed'"):
        fused_mean_op(*arguments, False, "mixed")
    with pytest.raises(RuntimeError, match="unknown hardness_mode 'soft'"):
        fused_mean_op(*arguments, False, "joint", "soft", 1.0)
    for strength in (-1.0, float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="hardness_strength"):
            fused_mean_op(*arguments, False, "joint", "all_negatives", strength)
    with pytest.raises(ValueError, match="partition_mode"):
        reference_mean(*arguments, "mixed")
    with pytest.raises(ValueError, match="hardness_mode"):
        reference_mean(*arguments, "joint", "soft", 1.0)
    with pytest.raises(ValueError, match="hardness_strength"):
        reference_mean(*arguments, "joint", "all_negatives", -1.0)


@requires_extension
def test_nan_row_gives_nan_loss_like_the_reference():
    anchors, candidates = make_inputs(10, 2, 4, torch.float32, seed=15)
    anchors[3, 1] = float("nan")
    arguments = mnrl_arguments(anchors, candidates, "q2d+d2q")
    loss = fused_mean_op(*arguments, False, "per_direction", "all_negatives", 5.0)[0]
    assert torch.isnan(loss) and torch.isnan(reference_mean(*arguments, "per_direction", "all_negatives", 5.0))


def test_dispatch_upcasts_half_precision():
    anchors, candidates = make_inputs(16, 2, 8, torch.float32, seed=17)
    anchors, candidates = anchors.half().requires_grad_(), candidates.half().requires_grad_()
    options = dict(scale=5.0, positive_anchor=True, partition_mode="per_direction", hardness_mode="in_batch_negatives",
                   hardness_strength=2.0)
    loss = masked_infonce_mean(anchors, candidates, **options)
    loss.backward()
    assert loss.dtype == torch.float32 and anchors.grad.dtype == torch.float16
    a32, c32 = (t.detach().float().requires_grad_() for t in (anchors, candidates))
    expected = reference_mean(a32, c32, None, None, 5.0, "none", 0.0, False, True, 0, True, "per_direction",
                              "in_batch_negatives", 2.0)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(anchors.grad, a32.grad.half())


@requires_extension
def test_dispatch_without_the_kernel_runs_the_reference_with_the_same_options(monkeypatch):
    import importlib


    anchors, candidates = make_inputs(40, 2, 8, torch.float64, seed=18)
    options = dict(scale=10.0, positive_anchor=True, partition_mode="per_direction", hardness_mode="all_negatives",
                   hardness_strength=3.0)
    results = []
    for forced in (False, True):
        monkeypatch.setattr(layer, "_force_reference", forced)
        a, c = anchors.clone().requires_grad_(), candidates.clone().requires_grad_()
        loss = masked_infonce_mean(a, c, **options)
        results.append((loss, *torch.autograd.grad(loss, (a, c))))
    for fused, fallback in zip(*results):
        torch.testing.assert_close(fused, fallback, rtol=1e-10, atol=1e-12)
