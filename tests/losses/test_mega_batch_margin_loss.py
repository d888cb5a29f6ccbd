"""MegaBatchMarginLoss: parity with sentence-transformers (values and gradients), both
use_mini_batched_version settings, edges, and MatryoshkaLoss around it."""

from __future__ import annotations

import pytest
import torch
from _support import bundled_model_path

import embedplug
from embedplug.functional import mega_batch_margin_loss
from embedplug.losses import MegaBatchMarginLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")


class _NoModel(torch.nn.Module):
    """Stands in for the model when only calculate_loss runs."""


def st_calculate(anchors, positives, with_backward=False, mini_batch_size=3, **margins):
    loss = st_losses.MegaBatchMarginLoss(_NoModel(), use_mini_batched_version=False, mini_batch_size=mini_batch_size,
                                         **margins)
    return loss.calculate_loss([[anchors], [positives]], with_backward=with_backward)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def value_and_grads(fn, anchors, positives):
    a, p = leaves(anchors, positives)
    value = fn(a, p)
    if value.requires_grad:
        value.backward()
    return value.detach(), a.grad, p.grad


def assert_matches_st(anchors, positives, **margins):
    ours = value_and_grads(lambda a, p: mega_batch_margin_loss(a, p, **margins), anchors, positives)
    theirs = value_and_grads(lambda a, p: st_calculate(a, p, **margins), anchors, positives)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6, equal_nan=True)
    for mine, expected in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 65, 200])
@pytest.mark.parametrize("margins", [{}, dict(positive_margin=0.2, negative_margin=-0.1), dict(positive_margin=1.5)])
def test_functional_matches_sentence_transformers(n, margins):
    generator = torch.Generator().manual_seed(n)
    anchors = torch.randn(n, 16, generator=generator)
    positives = anchors + 0.7 * torch.randn(n, 16, generator=generator)
    assert_matches_st(anchors, positives, **margins)


def test_edges_identical_pairs_duplicates_zero_rows_and_float64():
    generator = torch.Generator().manual_seed(9)
    anchors = torch.randn(6, 8, generator=generator)
    assert_matches_st(anchors, anchors.clone())  # identical anchor and positive
    positives = torch.randn(6, 8, generator=generator)
    positives[3] = positives[1]  # two candidates tie for every anchor that prefers them
    positives[4] = 0.0  # a zero row: cos = 0 after F.normalize's eps
    assert_matches_st(anchors, positives, negative_margin=-1.0)
    assert_matches_st(anchors.double(), positives.double())
    wide = torch.randn(6, 16, generator=generator)
    assert_matches_st(wide[:, ::2], wide[:, 1::2])  # non-contiguous


def test_non_finite_input_is_nan_like_sentence_transformers():
    anchors = torch.randn(4, 8)
    positives = torch.randn(4, 8)
    positives[2, 1] = float("nan")
    ours = mega_batch_margin_loss(anchors, positives)
    assert torch.isnan(ours) and torch.isnan(st_calculate(anchors, positives))


def test_half_precision_is_computed_in_float32_like_sentence_transformers():
    generator = torch.Generator().manual_seed(3)
    anchors, positives = torch.randn(12, 16, generator=generator), torch.randn(12, 16, generator=generator)
    ours = mega_batch_margin_loss(anchors.half(), positives.half())
    theirs = st_calculate(anchors.half(), positives.half())
    assert ours.dtype == theirs.dtype == torch.float32  # ST's cos_sim computes sub-float32 input in float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        mega_batch_margin_loss(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="empty batch"):
        mega_batch_margin_loss(torch.randn(0, 8), torch.randn(0, 8))
    with pytest.raises(ValueError, match="expects exactly 2 input columns"):
        MegaBatchMarginLoss(_NoModel(), use_mini_batched_version=False)([{}, {}, {}], None)


def test_calculate_loss_with_backward_matches_sentence_transformers_mini_batched():
    generator = torch.Generator().manual_seed(5)
    anchor_batches = [torch.randn(3, 8, generator=generator) for _ in range(3)]
    positive_batches = [torch.randn(3, 8, generator=generator) for _ in range(3)]

    def run(loss):
        reps = [[t.clone().requires_grad_() for t in anchor_batches], [t.clone().requires_grad_() for t in positive_batches]]
        value = loss.calculate_loss(reps, None, with_backward=True)
        return value, [t.grad for column in reps for t in column]

    ours = run(MegaBatchMarginLoss(_NoModel(), use_mini_batched_version=False, mini_batch_size=2))
    theirs = run(st_losses.MegaBatchMarginLoss(_NoModel(), use_mini_batched_version=False, mini_batch_size=2))
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    for mine, expected in zip(ours[1], theirs[1]):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-6)


def test_drop_in_attributes_config_and_registry():
    ours = MegaBatchMarginLoss(_NoModel(), positive_margin=0.7, use_mini_batched_version=False, mini_batch_size=9)
    theirs = st_losses.MegaBatchMarginLoss(_NoModel(), positive_margin=0.7, use_mini_batched_version=False,
                                           mini_batch_size=9)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation
    assert ours.uses_gradient_cache is theirs.uses_gradient_cache is False
    assert embedplug.get_loss("MegaBatchMarginLoss") is MegaBatchMarginLoss
    [record] = [r for r in embedplug.list_plugins() if r["name"] == "embedplug"]
    assert record["implementations"]["MegaBatchMarginLoss"] == "embedplug fused kernel"


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(11)
    # Spread-out rows: finite differences must not flip which negative is hardest.
    anchors = (torch.randn(7, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    positives = (torch.randn(7, 5, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, p: mega_batch_margin_loss(a, p, positive_margin=1.5, negative_margin=-1.0), (anchors, positives)
    )


# ----- through the real model (slow)


@pytest.fixture(scope="module")
def model():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    model.max_seq_length = 12
    return model


def texts(count, offset=0):
    words = ["cats", "stocks", "rain", "football", "cooking", "trains", "music"]
    return [f"{words[(i + offset) % len(words)]} line {i + offset} item {(i * 3) % 7}" for i in range(count)]


def through_model(model, loss, columns, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)
    value = loss([model.preprocess(column) for column in columns], None)
    value.backward()
    return value.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.slow
@pytest.mark.parametrize("use_mini_batched_version", [True, False])
@pytest.mark.parametrize("mode", ["eval", "train_dropout"])
def test_real_model_parity(model, use_mini_batched_version, mode):
    model.train(mode == "train_dropout")
    try:
        columns = [texts(7), texts(7, 20)]
        options = dict(use_mini_batched_version=use_mini_batched_version, mini_batch_size=3, negative_margin=0.1)
        ours = through_model(model, MegaBatchMarginLoss(model, **options), columns)
        theirs = through_model(model, st_losses.MegaBatchMarginLoss(model, **options), columns)
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
        assert ((ours[1] - theirs[1]).norm() / theirs[1].norm()).item() < 1e-4
    finally:
        model.eval()


@pytest.mark.slow
def test_matryoshka_around_it_matches_sentence_transformers(model):
    model.eval()
    columns = [texts(6), texts(6, 30)]

    def wrapped(cls):
        return st_losses.MatryoshkaLoss(model, cls(model, mini_batch_size=4, negative_margin=0.0), [384, 32])

    ours = through_model(model, wrapped(MegaBatchMarginLoss), columns)
    theirs = through_model(model, wrapped(st_losses.MegaBatchMarginLoss), columns)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    assert ((ours[1] - theirs[1]).norm() / theirs[1].norm()).item() < 1e-4
