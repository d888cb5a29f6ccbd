"""embedplug's drop-ins inside sentence-transformers' loss wrappers, and the GIST case where the 6.2 and
6.3 releases differ, on the bundled all-MiniLM-L6-v2. Every number is compared with the installed
release's own classes in the same wrapper. Slow (real model), kept small: 8-12 rows, 12 tokens.

- ``MatryoshkaLoss``, ``AdaptiveLayerLoss`` and ``Matryoshka2dLoss`` around the in-batch, guided and
  labelled drop-ins (forward decorated by the wrapper);
- ``MatryoshkaLoss`` around the cached drop-ins, which it decorates through the installed engine
  (``uses_gradient_cache`` and ``calculate_loss(reps, labels, with_backward=...)``, and from 6.3
  ``resolve_gradient_cache_loss``, which follows ``.loss`` wrappers).
"""

from __future__ import annotations

import random

import pytest
import torch
from _support import bundled_model_path

import embedplug.losses as ours
from embedplug.functional import gist_embed_loss
from embedplug.st_version import current

pytestmark = pytest.mark.slow
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_gradcache = pytest.importorskip("sentence_transformers.base.losses.gradcache")

WORDS = ["cats", "stocks", "rain", "football", "cooking", "trains", "music", "gardens", "rivers"]


def texts(count, offset=0):
    return [f"{WORDS[(i + offset) % len(WORDS)]} note {i + offset} item {(i * 5) % 11}" for i in range(count)]


@pytest.fixture(scope="module")
def models():
    from sentence_transformers import SentenceTransformer

    path = str(bundled_model_path())
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 12
    model.eval()
    guide = SentenceTransformer(path, device="cpu")
    guide.max_seq_length = 12
    guide.eval()
    return model, guide


def run(model, loss, columns, labels=None, seed=0):
    """(loss, every parameter gradient flattened) of one step; the wrappers' layer/dim sampling seeded."""
    model.zero_grad()
    torch.manual_seed(seed)
    random.seed(seed)
    value = loss([model.preprocess(column) for column in columns], labels)
    value.backward()
    return value.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_same(ours_result, theirs_result):
    (loss, grads), (expected_loss, expected_grads) = ours_result, theirs_result
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert ((grads - expected_grads).norm() / expected_grads.norm()).item() < 1e-4


# (inner loss name, options, data): labelled losses get one text column with duplicate texts, so the
# cosine distance of 6.3 (clamped, zero diagonal) and of 6.2 differ on the batch.
LABELLED_TEXTS = [t for t in texts(6) for _ in range(2)]
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
INNER = {
    "MultipleNegativesRankingLoss": (dict(scale=20.0), "pairs"),
    "GISTEmbedLoss": (dict(margin_strategy="absolute", margin=-0.3, temperature=0.05), "pairs"),
    "BatchSemiHardTripletLoss": (dict(margin=0.2), "labelled"),
    "BatchHardTripletLoss": (dict(margin=0.5), "labelled"),
}


def build_inner(module, name, model, guide):
    options, data = INNER[name]
    if name == "GISTEmbedLoss":
        options = {**options, "guide": guide}
    if data == "labelled":
        options = {**options, "distance_metric": st_losses.BatchHardTripletLossDistanceFunction.cosine_distance}
    return getattr(module, name)(model, **options)


WRAPPERS = {
    "MatryoshkaLoss": lambda model, inner: st_losses.MatryoshkaLoss(model, inner, matryoshka_dims=[384, 96, 24]),
    "AdaptiveLayerLoss": lambda model, inner: st_losses.AdaptiveLayerLoss(model, inner, n_layers_per_step=2),
    "Matryoshka2dLoss": lambda model, inner: st_losses.Matryoshka2dLoss(
        model, inner, matryoshka_dims=[384, 64], n_layers_per_step=1, n_dims_per_step=2
    ),
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("inner", INNER)
def test_drop_in_inside_a_sentence_transformers_wrapper_equals_its_own_class(models, inner, wrapper):
    model, guide = models
    _, data = INNER[inner]
    # Positives on their anchor's topic: GIST's guide then keeps the self similarities at margin -0.3,
    # where the releases differ.
    columns, labels = ([texts(8), texts(8, len(WORDS))], None) if data == "pairs" else ([LABELLED_TEXTS], LABELS)
    wrapped_ours = WRAPPERS[wrapper](model, build_inner(ours, inner, model, guide))
    wrapped_theirs = WRAPPERS[wrapper](model, build_inner(st_losses, inner, model, guide))
    assert_same(run(model, wrapped_ours, columns, labels), run(model, wrapped_theirs, columns, labels))


def test_gist_with_a_negative_margin_follows_the_installed_release(models):
    # The case: absolute margin -0.3, two columns, the default temperature. Positives close
    # to their anchors (same topic word, guide similarity t > 0.7) make the guide keep every self
    # similarity (1 is not above t + 0.3), so 6.2 (self entries in the softmax, ~12.8 here) and
    # 6.3 (masked, ~1.9) differ widely.
    model, guide = models
    columns = [texts(12), texts(12, len(WORDS))]
    options = dict(margin_strategy="absolute", margin=-0.3)
    expected = run(model, st_losses.GISTEmbedLoss(model, guide, **options), columns)
    assert_same(run(model, ours.GISTEmbedLoss(model, guide, **options), columns), expected)
    with torch.no_grad():
        student = [model.encode(column, convert_to_tensor=True) for column in columns]
        guided = [guide.encode(column, convert_to_tensor=True) for column in columns]
        by_release = {
            release: gist_embed_loss(student[0], student[1], guide_anchor=guided[0], guide_positive=guided[1],
                                     st_version=release, **options)
            for release in ("6.2", "6.3")
        }
    torch.testing.assert_close(by_release[current().version], expected[0], rtol=1e-5, atol=1e-5)
    assert by_release["6.2"] > by_release["6.3"] + 5.0


CACHED = {
    "CachedGISTEmbedLoss": dict(temperature=0.05, margin=-0.3),
    "CachedMultipleNegativesSymmetricRankingLoss": dict(scale=20.0),
    "MegaBatchMarginLoss": dict(positive_margin=0.7, negative_margin=0.4),
}


def build_cached(module, name, model, guide):
    options = {**CACHED[name], "mini_batch_size": 3}
    if name == "CachedGISTEmbedLoss":
        options["guide"] = guide
    return getattr(module, name)(model, **options)


@pytest.mark.filterwarnings("ignore:The CachedMultipleNegativesSymmetricRankingLoss is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", CACHED)
def test_cached_drop_in_inside_matryoshka_follows_the_installed_engine(models, name):
    model, guide = models
    columns = [texts(7), texts(7, len(WORDS))]  # mini-batches of 3: one uneven; positives on topic
    our_loss, their_loss = build_cached(ours, name, model, guide), build_cached(st_losses, name, model, guide)
    assert st_gradcache.uses_gradient_cache(our_loss) is st_gradcache.uses_gradient_cache(their_loss) is True
    dims = dict(matryoshka_dims=[384, 64, 16], matryoshka_weights=[1.0, 0.5, 2.0])
    wrapped_ours = st_losses.MatryoshkaLoss(model, our_loss, **dims)
    wrapped_theirs = st_losses.MatryoshkaLoss(model, their_loss, **dims)
    # MatryoshkaLoss decorated the drop-in's own calculate_loss, as it does sentence-transformers'.
    assert isinstance(our_loss.calculate_loss, st_losses.matryoshka.CachedLossDecorator)
    assert_same(run(model, wrapped_ours, columns), run(model, wrapped_theirs, columns))


class PassThrough(torch.nn.Module):
    """A wrapper that only holds a cached loss as ``.loss`` and calls it (what 6.3's resolution follows)."""

    uses_gradient_cache = True

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, sentence_features, labels):
        return self.loss(sentence_features, labels)


@pytest.mark.skipif(
    not hasattr(st_gradcache, "resolve_gradient_cache_loss"),
    reason="this sentence-transformers release does not follow .loss wrappers (added in 6.3)",
)
def test_cached_drop_in_behind_a_loss_wrapper_is_found_by_resolve_gradient_cache_loss(models):
    model, _ = models
    columns = [texts(7), texts(7, 40)]
    our_loss = ours.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3)
    their_loss = st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=3)
    assert st_gradcache.resolve_gradient_cache_loss(PassThrough(our_loss)) is our_loss
    dims = dict(matryoshka_dims=[384, 32])
    assert_same(
        run(model, st_losses.MatryoshkaLoss(model, PassThrough(our_loss), **dims), columns),
        run(model, st_losses.MatryoshkaLoss(model, PassThrough(their_loss), **dims), columns),
    )
