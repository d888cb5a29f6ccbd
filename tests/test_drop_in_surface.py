"""Every drop-in (an embedplug loss or sampler named like a sentence-transformers class) has that class's
surface: constructor parameters, public attributes and methods, child modules, and parameter / state-dict
keys, so user code written against sentence-transformers finds what it reads."""

from __future__ import annotations

import inspect

import pytest
import torch
from _support import bundled_model_path

import embedplug.losses
import embedplug.samplers

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
st_sampler = pytest.importorskip("sentence_transformers.base.sampler")
datasets = pytest.importorskip("datasets")


def _drop_ins(ours_module, theirs_module) -> list[tuple[type, type]]:
    pairs = []
    for name in ours_module.__all__:
        ours, theirs = getattr(ours_module, name), getattr(theirs_module, name, None)
        if isinstance(ours, type) and isinstance(theirs, type) and issubclass(ours, (torch.nn.Module, torch.utils.data.Sampler)):
            pairs.append((ours, theirs))
    return pairs


LOSS_PAIRS = _drop_ins(embedplug.losses, st_losses)
SAMPLER_PAIRS = _drop_ins(embedplug.samplers, st_sampler)


def test_every_builtin_drop_in_is_compared():
    # SupCon / MultiSimilarity / Circle follow pytorch-metric-learning; sentence-transformers has no such class.
    named_like_st = {cls.__name__ for cls in embedplug.losses.BUILTIN_LOSSES if hasattr(st_losses, cls.__name__)}
    assert {"GISTEmbedLoss", "CachedMultipleNegativesRankingLoss", "BatchHardTripletLoss"} <= named_like_st
    assert {ours.__name__ for ours, _ in LOSS_PAIRS} >= named_like_st
    assert {ours.__name__ for ours, _ in SAMPLER_PAIRS} >= {"NoDuplicatesBatchSampler", "GroupByLabelBatchSampler"}


@pytest.fixture(scope="module")
def models():
    from sentence_transformers import SentenceTransformer

    path = str(bundled_model_path())
    return SentenceTransformer(path, device="cpu"), SentenceTransformer(path, device="cpu")


def _public_surface(obj) -> set[str]:
    names = {name for name in dir(type(obj)) if not name.startswith("_")}
    names |= {name for name in vars(obj) if not name.startswith("_")}
    return names


def _assert_parameters_cover(ours: type, theirs: type) -> None:
    ours_parameters = list(inspect.signature(ours.__init__).parameters)
    theirs_parameters = list(inspect.signature(theirs.__init__).parameters)
    # Same names in the same positions; embedplug's own options only after sentence-transformers' ones.
    assert ours_parameters[: len(theirs_parameters)] == theirs_parameters


@pytest.mark.parametrize("ours, theirs", LOSS_PAIRS, ids=[ours.__name__ for ours, _ in LOSS_PAIRS])
def test_loss_surface_matches_sentence_transformers(ours, theirs, models):
    model, guide = models
    _assert_parameters_cover(ours, theirs)
    options = {"guide": guide} if "guide" in inspect.signature(theirs.__init__).parameters else {}
    ours_loss, theirs_loss = ours(model, **options), theirs(model, **options)
    missing = _public_surface(theirs_loss) - _public_surface(ours_loss)
    assert not missing, f"{ours.__name__} lacks {sorted(missing)}"
    assert [name for name, _ in ours_loss.named_children()] == [name for name, _ in theirs_loss.named_children()]
    for name, child in theirs_loss.named_children():
        assert type(getattr(ours_loss, name)).__name__ == type(child).__name__, name
    assert [name for name, _ in ours_loss.named_parameters()] == [name for name, _ in theirs_loss.named_parameters()]
    assert list(ours_loss.state_dict()) == list(theirs_loss.state_dict())
    assert ours_loss.get_config_dict().keys() == theirs_loss.get_config_dict().keys()


@pytest.mark.parametrize("ours, theirs", SAMPLER_PAIRS, ids=[ours.__name__ for ours, _ in SAMPLER_PAIRS])
def test_sampler_surface_matches_sentence_transformers(ours, theirs):
    _assert_parameters_cover(ours, theirs)
    dataset = datasets.Dataset.from_dict(
        {"anchor": [f"a{i}" for i in range(12)], "positive": [f"p{i}" for i in range(12)], "label": [i % 3 for i in range(12)]}
    )
    arguments = dict(batch_size=4, drop_last=False, valid_label_columns=["label"], generator=torch.Generator(), seed=1)
    ours_sampler, theirs_sampler = ours(dataset, **arguments), theirs(dataset, **arguments)
    missing = _public_surface(theirs_sampler) - _public_surface(ours_sampler)
    assert not missing, f"{ours.__name__} lacks {sorted(missing)}"
    for name in ("batch_size", "drop_last", "valid_label_columns", "seed", "groups"):
        if hasattr(theirs_sampler, name):
            assert getattr(ours_sampler, name) == getattr(theirs_sampler, name), name


def test_batch_triplet_losses_keep_the_model_as_sentence_embedder(models):
    model, _ = models
    loss = embedplug.losses.BatchHardTripletLoss(model)
    assert loss.model is model and loss.sentence_embedder is model
    replacement = torch.nn.Linear(2, 2)
    loss.model = replacement  # what SentenceTransformerTrainer does with a wrapped model
    assert loss.sentence_embedder is replacement and [name for name, _ in loss.named_children()] == ["sentence_embedder"]
    loss.sentence_embedder = model
    assert loss.model is model


def test_cached_mnrl_options_live_on_its_wrapped_loss(models):
    model, _ = models
    loss = embedplug.losses.CachedMultipleNegativesRankingLoss(model, scale=10.0)
    assert isinstance(loss.loss, embedplug.losses.MultipleNegativesRankingLoss) and loss.loss.model is model
    assert loss.scale == loss.loss.scale == 10.0
    generator = torch.Generator().manual_seed(0)
    queries, documents = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    at_ten = loss.calculate_loss([[queries], [documents]])
    loss.scale = 5.0
    assert loss.loss.scale == 5.0 and loss.temperature == 0.2
    loss.loss.scale = 3.0
    assert loss.scale == 3.0
    reference = embedplug.losses.MultipleNegativesRankingLoss(model, scale=3.0)
    torch.testing.assert_close(loss.calculate_loss([[queries], [documents]]), reference.compute_loss_from_embeddings([queries, documents]))
    assert not torch.equal(at_ten, loss.calculate_loss([[queries], [documents]]))
    with pytest.raises(ValueError, match="Scale must be a positive value"):
        embedplug.losses.CachedMultipleNegativesRankingLoss(model, scale=0.0)


@pytest.mark.parametrize("loss_name", ["GISTEmbedLoss", "CachedGISTEmbedLoss"])
def test_gist_sim_matrix_and_replaced_parts(loss_name, models):
    model, guide = models
    ours, theirs = getattr(embedplug.losses, loss_name)(model, guide), getattr(st_losses, loss_name)(model, guide)
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 8, generator=generator), torch.randn(7, 8, generator=generator)
    torch.testing.assert_close(ours.sim_matrix(a, b), theirs.sim_matrix(a, b))
    anchors, positives = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    ours.cross_entropy_loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    with pytest.raises(ValueError, match="cross_entropy_loss must stay nn.CrossEntropyLoss"):
        ours._gist_from_columns([anchors, positives], [anchors, positives])
    ours.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    ours.similarity_fct = torch.nn.PairwiseDistance()
    with pytest.raises(ValueError, match="similarity_fct must stay nn.CosineSimilarity"):
        ours._gist_from_columns([anchors, positives], [anchors, positives])
