"""Mean cosine within and across classes, and the collapse warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from embedplug.evaluation.spread import CollapseWarning, embedding_spread, warn_if_collapsed


def brute_force(embeddings, labels):
    embeddings = torch.nn.functional.normalize(embeddings.double(), dim=1)
    cosines = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    return cosines[same & off_diagonal].mean().item(), cosines[~same].mean().item()


def test_matches_the_pairwise_definition():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(60, 16, generator=generator)
    labels = torch.randint(0, 5, (60,), generator=generator)
    report = embedding_spread(embeddings, labels)
    within, across = brute_force(embeddings, labels)
    assert report.within_class == pytest.approx(within, abs=1e-9)
    assert report.across_class == pytest.approx(across, abs=1e-9)


def test_a_collapsed_space_is_flagged_and_warned_about():
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.tensor([1.0, 0, 0, 0]) + 0.01 * torch.randn(40, 4, generator=generator)
    report = embedding_spread(embeddings, torch.arange(40) % 4)
    assert report.collapsed
    with pytest.warns(CollapseWarning, match="collapsed"):
        warn_if_collapsed(report, "supersense")


def test_a_spread_space_is_not_flagged():
    embeddings = torch.eye(8).repeat(2, 1)
    labels = torch.arange(16) % 8  # each class: the same basis vector twice
    report = embedding_spread(embeddings, labels)
    assert report.within_class == pytest.approx(1.0)
    assert report.across_class == pytest.approx(0.0)
    assert not report.collapsed
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        warn_if_collapsed(report, "supersense")


def test_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        embedding_spread(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
