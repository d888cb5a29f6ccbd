"""Hyper-parameters and columns checked once (embedplug._validation), with a message naming the argument;
the fused and reference paths agree on every accepted input; non-finite rows are warned about once."""

from __future__ import annotations

import math
import warnings

import sys

import pytest
import torch
from torch import nn

import embedplug.functional as F
from embedplug.pair_rules import presets as pair_rule_presets
from embedplug.losses import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
    CachedGISTEmbedLoss,
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
    TripletLoss,
)
from embedplug.ops import layer, masked_infonce

# The package re-exports a function named like this module, so take the module itself.
masked_infonce_op = sys.modules["embedplug.ops.masked_infonce"]

pytest.importorskip("sentence_transformers")

LABELLED_FUNCTIONS = {
    "batch_hard": F.batch_hard_triplet_loss,
    "semi_hard": F.batch_semi_hard_triplet_loss,
    "batch_all": F.batch_all_triplet_loss,
}
LABELLED_CLASSES = {"batch_hard": BatchHardTripletLoss, "semi_hard": BatchSemiHardTripletLoss, "batch_all": BatchAllTripletLoss}


def batch(n=12, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator), torch.arange(n) // 3


def force_reference(monkeypatch):
    monkeypatch.setattr(layer, "_force_reference", True)


class ToyEmbedder(nn.Sequential):
    """A SentenceTransformer-shaped model (indexable modules, features dict in)."""

    def __init__(self):
        super().__init__(nn.Linear(6, 5))

    def forward(self, features):
        return {"sentence_embedding": super().forward(features["input_ids"])}


# -- margins and distances of the labelled losses ----------------------------------------------


@pytest.mark.parametrize("name", list(LABELLED_FUNCTIONS))
@pytest.mark.parametrize(
    "margin, error", [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError), (None, TypeError), ("abc", TypeError)]
)
def test_bad_margin_is_refused_by_function_and_class(name, margin, error):
    x, labels = batch()
    with pytest.raises(error, match="margin"):
        LABELLED_FUNCTIONS[name](x, labels, margin=margin)
    with pytest.raises(error, match="margin"):
        LABELLED_CLASSES[name](None, margin=margin)


@pytest.mark.parametrize("margin, error", [(math.nan, ValueError), (None, TypeError), ("abc", TypeError)])
def test_bad_triplet_margin_is_refused(margin, error):
    a = torch.randn(4, 3)
    with pytest.raises(error, match="margin"):
        F.triplet_loss(a, a, a, margin=margin)
    with pytest.raises(error, match="triplet_margin"):
        TripletLoss(None, triplet_margin=margin)


@pytest.mark.parametrize("name", [*LABELLED_FUNCTIONS, "soft_margin"])
@pytest.mark.parametrize("distance, error", [(None, TypeError), (3, TypeError), ("manhattan", ValueError)])
def test_bad_distance_is_refused(name, distance, error):
    function = LABELLED_FUNCTIONS.get(name, F.batch_hard_soft_margin_triplet_loss)
    cls = LABELLED_CLASSES.get(name, BatchHardSoftMarginTripletLoss)
    x, labels = batch()
    with pytest.raises(error, match="distance"):
        function(x, labels, distance=distance)
    with pytest.raises(error, match="distance_metric"):
        cls(None, distance_metric=distance)


@pytest.mark.parametrize("name", [*LABELLED_FUNCTIONS, "soft_margin"])
@pytest.mark.parametrize("wrong", [lambda e: e, lambda e: (e @ e.t())[:-1], lambda e: e.sum()], ids=["NxD", "short", "scalar"])
def test_distance_callable_with_the_wrong_shape_is_refused(name, wrong):
    function = LABELLED_FUNCTIONS.get(name, F.batch_hard_soft_margin_triplet_loss)
    x, labels = batch()
    with pytest.raises(ValueError, match=r"\[N, N\] = \[12, 12\]"):
        function(x, labels, distance=wrong)


def test_triplet_distance_callable_with_the_wrong_shape_is_refused():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\[N\] = \[4\]"):
        F.triplet_loss(a, a, a, distance=lambda u, v: u - v)
    with pytest.raises(TypeError, match="distance"):
        F.triplet_loss(a, a, a, distance=None)


# -- GIST and MNRL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0, -0.05, math.nan, math.inf])
def test_gist_temperature_must_be_positive_and_finite(temperature):
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="temperature"):
        F.gist_embed_loss(a, p, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        GISTEmbedLoss(None, None, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        CachedGISTEmbedLoss(ToyEmbedder(), None, temperature=temperature)


def test_gist_temperature_zero_from_the_cli_config_is_a_config_error():
    from embedplug.train.config import ConfigError, load_config
    from embedplug.train.losses import build_loss, loss_class

    config = load_config(None, ["data.task=reverse-dictionary", "loss.name=GISTEmbedLoss", "loss.options.temperature=0"])
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        build_loss(loss_class(config), config, None, lambda: None)


@pytest.mark.parametrize("margin", [math.nan, math.inf, None, "abc"])
def test_gist_margin_must_be_a_finite_number(margin):
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises((ValueError, TypeError), match="margin"):
        F.gist_embed_loss(a, p, margin=margin)
    with pytest.raises((ValueError, TypeError), match="margin"):
        GISTEmbedLoss(None, None, margin=margin)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("reference", [False, True], ids=["fused", "reference"])
def test_non_finite_guide_entries_are_warned_about_on_both_paths(bad, reference, monkeypatch):
    # Trained through as sentence-transformers does (see test_gist_embed_loss.py), never refused.
    if reference:
        force_reference(monkeypatch)
    a, p, guide = torch.randn(4, 3), torch.randn(4, 3), torch.randn(8, 2)
    guide[5, 1] = bad
    with pytest.warns(RuntimeWarning, match="guide_candidates have rows with NaN or Inf"):
        assert torch.isfinite(F.gist_embed_loss(a, p, guide_anchor=guide[:4], guide_positive=guide[4:], margin=0.1))
    with pytest.warns(RuntimeWarning, match="guide_candidates have rows with NaN or Inf"):
        masked_infonce(a, p, guide[:4], guide[4:], scale=20.0, margin_strategy="absolute")


@pytest.mark.parametrize("reference", [False, True], ids=["fused", "reference"])
def test_guide_rows_must_match_the_student_rows_on_both_paths(reference, monkeypatch):
    if reference:
        force_reference(monkeypatch)
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"guide_anchor must have one row per student row \(4\)"):
        F.gist_embed_loss(a, p, guide_anchor=torch.randn(3, 2), guide_positive=torch.randn(4, 2))
    with pytest.raises(ValueError, match="guide_anchors must have one row per row of anchors"):
        masked_infonce(a, p, torch.randn(3, 2), torch.randn(4, 2), scale=20.0, margin_strategy="absolute")


@pytest.mark.parametrize("scale", [math.inf, 0.0, -1.0, math.nan, "20"])
def test_mnrl_scale_must_be_positive_and_finite(scale):
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises((ValueError, TypeError), match="(?i)scale"):
        F.multiple_negatives_ranking_loss(a, p, scale=scale)
    with pytest.raises((ValueError, TypeError), match="(?i)scale"):
        MultipleNegativesRankingLoss(None, scale=scale)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(hardness_mode="in_batch_negatives", hardness_strength=-1.0), "hardness_strength"),
        (dict(hardness_mode="in_batch_negatives", hardness_strength=math.nan), "hardness_strength"),
        (dict(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"), "per_direction"),
        (dict(directions=("query_to_doc", "doc_to_doc"), partition_mode="per_direction"), "per_direction"),
    ],
)
def test_functional_mnrl_refuses_what_the_class_refuses(options, match):
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=match):
        F.multiple_negatives_ranking_loss(a, p, **options)
    with pytest.raises(ValueError, match=match):
        MultipleNegativesRankingLoss(None, **options)


# -- columns and mini-batches ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, columns",
    [
        (lambda: GISTEmbedLoss(None, None), 1),
        (lambda: TripletLoss(None), 2),
        (lambda: BatchHardTripletLoss(None), 0),
        (lambda: MultipleNegativesRankingLoss(None), 1),
    ],
    ids=["gist", "triplet", "batch_hard", "mnrl"],
)
def test_compute_loss_from_embeddings_with_too_few_columns(loss, columns):
    embeddings = [torch.randn(4, 3) for _ in range(columns)]
    with pytest.raises(ValueError, match=rf"(?i)(expects .* embedding column|expected at least 2 embeddings).*{columns}"):
        loss().compute_loss_from_embeddings(embeddings, torch.arange(4))


@pytest.mark.parametrize("cls", [CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss])
@pytest.mark.parametrize("size, error", [(0, ValueError), (-4, ValueError), ("32", TypeError), (2.5, TypeError)])
def test_cached_mini_batch_size_must_be_a_positive_integer(cls, size, error):
    extra = {"guide": None} if cls is CachedGISTEmbedLoss else {}
    with pytest.raises(error, match="mini_batch_size must be a positive integer"):
        cls(ToyEmbedder(), mini_batch_size=size, **extra)


# -- fused and reference paths agree on what is accepted -------------------------------------------


def _run_all(x, labels):
    a, p, n = x[:4], x[4:8], x[8:12]
    guide = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    return {
        "batch_hard_0": lambda: F.batch_hard_triplet_loss(x, labels, margin=0.0),
        "batch_hard_neg": lambda: F.batch_hard_triplet_loss(x, labels, margin=-1.5),
        "soft_margin_cos": lambda: F.batch_hard_soft_margin_triplet_loss(x, labels, distance="cosine"),
        "semi_hard_0": lambda: F.batch_semi_hard_triplet_loss(x, labels, margin=0.0),
        "semi_hard_big": lambda: F.batch_semi_hard_triplet_loss(x, labels, margin=1e6),
        "batch_all_neg": lambda: F.batch_all_triplet_loss(x, labels, margin=-0.5),
        "batch_all_sq": lambda: F.batch_all_triplet_loss(x, labels, margin=2.0, distance="squared_euclidean"),
        "gist_guided_neg_margin": lambda: F.gist_embed_loss(
            a, p, [n], guide_anchor=guide[:4], guide_positive=guide[4:8], guide_negatives=[guide[8:]], margin=-0.1
        ),
        "gist_relative": lambda: F.gist_embed_loss(
            a, p, guide_anchor=guide[:4], guide_positive=guide[4:8], margin_strategy="relative", margin=0.3, temperature=0.5
        ),
        "gist_self": lambda: F.gist_embed_loss(a, p, [n], margin=0.05, temperature=1e-3),
        "mnrl": lambda: F.multiple_negatives_ranking_loss(a, p, [n], scale=1e-3),
        "mnrl_sym": lambda: F.multiple_negatives_ranking_loss(
            a, p, directions=("query_to_doc", "doc_to_query", "query_to_query"), scale=50.0
        ),
    }


@pytest.mark.parametrize("with_nan_row", [False, True], ids=["finite", "nan_row"])
def test_fused_and_reference_paths_agree_on_accepted_inputs(with_nan_row, monkeypatch):
    x, labels = batch()
    if with_nan_row:
        x[2, 1] = math.nan

    def results():
        out = {}
        for name in _run_all(x, labels):
            x_leaf = x.detach().clone().requires_grad_()
            loss = _run_all(x_leaf, labels)[name]()
            loss.backward()
            out[name] = (loss.detach(), x_leaf.grad)
        return out

    fused = results()
    force_reference(monkeypatch)
    reference = results()
    for name in fused:
        (fused_loss, fused_grad), (reference_loss, reference_grad) = fused[name], reference[name]
        torch.testing.assert_close(fused_loss, reference_loss, equal_nan=True, msg=name)
        if with_nan_row:
            # Both NaN, with NaN reaching the same rows' gradients (where inside a row differs:
            # the squared-euclidean batch-all reference leaves some entries of a row finite).
            assert torch.isnan(fused_loss), name
            assert torch.equal(fused_grad.isnan().any(1), reference_grad.isnan().any(1)), name
        else:
            scale = reference_grad.abs().max().clamp_min(1.0)
            torch.testing.assert_close(fused_grad / scale, reference_grad / scale, atol=1e-5, rtol=1e-4, msg=name)


# -- non-finite embeddings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, columns",
    [
        (lambda: BatchHardTripletLoss(None), lambda x: [x]),
        (lambda: BatchAllTripletLoss(None), lambda x: [x]),
        (lambda: GISTEmbedLoss(None, None), lambda x: [x[:6], x[6:]]),
        (lambda: MultipleNegativesRankingLoss(None), lambda x: [x[:6], x[6:]]),
        (lambda: TripletLoss(None), lambda x: [x[:4], x[4:8], x[8:]]),
    ],
    ids=["batch_hard", "batch_all", "gist", "mnrl", "triplet"],
)
def test_non_finite_rows_keep_nan_and_warn_once_per_instance(make, columns):
    x, labels = batch()
    x[1, 0], x[7, 2] = math.nan, math.inf
    loss_module = make()
    with pytest.warns(RuntimeWarning, match="2 of the 12 embedding rows contain NaN or Inf"):
        loss = loss_module.compute_loss_from_embeddings(columns(x), labels)
    assert torch.isnan(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(loss_module.compute_loss_from_embeddings(columns(x), labels))
    with pytest.warns(RuntimeWarning, match="embedding rows contain NaN or Inf"):
        make().compute_loss_from_embeddings(columns(x), labels)


def test_finite_embeddings_do_not_warn():
    x, labels = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BatchHardTripletLoss(None).compute_loss_from_embeddings([x], labels)


FUNCTIONAL_FORMS_ON_NAN_INPUT = {
    # name -> loss on the 12 rows of batch() (one of them NaN); every public functional form.
    "batch_hard_triplet_loss": lambda x, y: F.batch_hard_triplet_loss(x, y),
    "batch_semi_hard_triplet_loss": lambda x, y: F.batch_semi_hard_triplet_loss(x, y),
    "batch_all_triplet_loss": lambda x, y: F.batch_all_triplet_loss(x, y),
    "batch_hard_soft_margin_triplet_loss": lambda x, y: F.batch_hard_soft_margin_triplet_loss(x, y),
    "supervised_contrastive_loss": lambda x, y: F.supervised_contrastive_loss(x, y),
    "multi_similarity_loss": lambda x, y: F.multi_similarity_loss(x, y, mining_epsilon=None),
    "circle_loss": lambda x, y: F.circle_loss(x, y),
    "multiple_negatives_ranking_loss": lambda x, y: F.multiple_negatives_ranking_loss(x[:6], x[6:]),
    "gist_embed_loss": lambda x, y: F.gist_embed_loss(x[:6], x[6:]),
    "mega_batch_margin_loss": lambda x, y: F.mega_batch_margin_loss(x[:6], x[6:]),
    "triplet_loss": lambda x, y: F.triplet_loss(x[:4], x[4:8], x[8:]),
    "pair_rule_loss": lambda x, y: F.pair_rule_loss(x, y, pair_rule_presets.contrastive()),
}


def test_every_functional_form_is_covered():
    assert sorted(FUNCTIONAL_FORMS_ON_NAN_INPUT) == sorted(F.__all__)


@pytest.mark.parametrize("name", sorted(FUNCTIONAL_FORMS_ON_NAN_INPUT))
def test_functional_forms_warn_when_non_finite_input_makes_the_loss_non_finite(name):
    x, labels = batch()
    x[1, 0] = math.nan
    with pytest.warns(RuntimeWarning, match=rf"{name}: the loss is nan because 1 of the \d+ input rows contain NaN"):
        loss = FUNCTIONAL_FORMS_ON_NAN_INPUT[name](x, labels)
    assert torch.isnan(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FUNCTIONAL_FORMS_ON_NAN_INPUT[name](batch()[0], labels)  # finite input: no warning
