"""embedplug.st_version: the installed sentence-transformers release is detected, mapped onto the table,
reported, and every switch of the table agrees with what the installed release's own code does."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import embedplug
from embedplug import st_version


@pytest.mark.parametrize(
    "installed, follows",
    [(None, "6.3"), ("6.2.0", "6.2"), ("6.2.5.dev0", "6.2"), ("6.3.0", "6.3"), ("6.3.2rc1", "6.3"),
     ("6.4.0", "6.3"), ("7.0.0", "6.3"), ("6.1.9", "6.2"), ("5.0.0", "6.2"), ("not-a-version", "6.3")],
)
def test_an_installed_version_follows_its_release_or_the_nearest_known(installed, follows):
    assert st_version.followed_release(installed) == follows


def test_semantics_for_names_the_known_releases_when_asked_for_another():
    assert st_version.semantics_for("6.3.1") is st_version.SEMANTICS["6.3"]
    assert st_version.semantics_for(st_version.SEMANTICS["6.2"]) is st_version.SEMANTICS["6.2"]
    assert st_version.semantics_for(None) is st_version.current()
    with pytest.raises(ValueError, match="known releases: 6.2, 6.3"):
        st_version.semantics_for("6.4")


def test_without_sentence_transformers_the_newest_semantics_apply():
    with mock.patch.object(st_version.metadata, "version", side_effect=st_version.metadata.PackageNotFoundError):
        assert st_version.installed_version() is None
    assert st_version.SEMANTICS[st_version.followed_release(None)] == st_version.SEMANTICS[st_version.NEWEST]


def test_the_followed_release_is_the_installed_one_and_reported():
    sentence_transformers = pytest.importorskip("sentence_transformers")
    major_minor = ".".join(sentence_transformers.__version__.split(".")[:2])
    assert st_version.INSTALLED == sentence_transformers.__version__
    assert st_version.current().version == major_minor
    report = embedplug.backend_info()["sentence_transformers"]
    assert report == {"follows": major_minor, "installed": sentence_transformers.__version__, "exact": True}


def test_losses_report_the_followed_release_in_backend_info():
    from embedplug.losses import BatchAllTripletLoss, BatchHardTripletLoss, GISTEmbedLoss, MultipleNegativesRankingLoss

    followed = st_version.current().version
    for loss in (GISTEmbedLoss(None, None), MultipleNegativesRankingLoss(None), BatchHardTripletLoss(None),
                 BatchAllTripletLoss(None, distance_metric=lambda x: torch.cdist(x, x))):
        info = loss.backend_info()
        assert info["follows_sentence_transformers"] == followed
        assert info["implementation"] in ("fused", "reference")


# The table against the installed release's own code: each switch is observed, not assumed.


def test_cosine_distance_switch_matches_the_installed_distance_function():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    # Every row twice: 1 - cos of a row with itself or its copy rounds below 0 for some rows.
    embeddings = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)).repeat(2, 1)
    distances = st_losses.BatchHardTripletLossDistanceFunction.cosine_distance(embeddings)
    plain = 1 - torch.nn.functional.normalize(embeddings, dim=1) @ torch.nn.functional.normalize(embeddings, dim=1).T
    assert (plain < 0).any(), "the example must round below 0 somewhere"
    clamped = bool((distances >= 0).all() and (distances.diagonal() == 0).all())
    assert clamped is st_version.current().cosine_distance_clamped
    assert clamped is not torch.equal(distances, plain)


def test_gist_switch_matches_the_installed_gist_loss():
    # A negative margin lets the guide keep every self similarity; only 6.3's own rule removes them.
    st_gist = pytest.importorskip("sentence_transformers.sentence_transformer.losses.gist_embed")
    anchors = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    loss = st_gist.GISTEmbedLoss.__new__(st_gist.GISTEmbedLoss)
    torch.nn.Module.__init__(loss)
    loss.__dict__.update(
        model=object(), guide=object(), temperature=1.0, margin_strategy="absolute", margin=-5.0,
        contrast_anchors=True, contrast_positives=False, gather_across_devices=False, must_retokenize=False,
        similarity_fct=torch.nn.CosineSimilarity(dim=-1), cross_entropy_loss=torch.nn.CrossEntropyLoss(),
    )
    with mock.patch.object(st_gist, "embed_columns", lambda model, _: [anchors, anchors]):
        value = loss.forward([{}, {}], None)
    # Anchor i == positive i: logits are cos(a_i, a_j) for the positives, plus the anchor block.
    similarities = anchors @ anchors.T
    without_self = similarities.masked_fill(torch.eye(6, dtype=torch.bool), float("-inf"))
    with_self = torch.logsumexp(torch.cat([similarities, similarities], dim=1), dim=1) - 1
    masked = torch.logsumexp(torch.cat([similarities, without_self], dim=1), dim=1) - 1
    expected = masked if st_version.current().gist_masks_own_similarity else with_self
    torch.testing.assert_close(value, expected.mean())
    assert not torch.allclose(masked.mean(), with_self.mean())
