"""The pytorch-metric-learning losses the pair-rule tests compare with, and the batches they use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from _support import label_structures

from embedplug.functional import pair_rule_loss
from embedplug.pair_rules import PairRule, presets


@dataclass(frozen=True)
class PmlCase:
    """One PML loss configuration and the rule that must equal it."""

    id: str
    rule: PairRule
    pml: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # TupletMarginLoss takes acos of the positives' cosines: at exactly +-1 (duplicates, axis
    # vectors) its gradient is infinite in PML too, so those batches are left out.
    smooth_at_exact_similarities: bool = True
    # For PML's AvgNonZeroReducer over anchors: PML's own per-anchor losses averaged over the anchors
    # whose loss is > 0 in exact arithmetic (``exact_count(labels)``), which embedplug's reducer
    # counts; PML's ``losses > 0`` drops the anchors whose tiny loss rounded to 0 (SupCon at a low
    # temperature, circle at a large gamma), in float64 too.
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def oracle(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.exact or self.pml)(embeddings, labels)


def exactly_counted(loss_class, counted: Callable[[torch.Tensor], torch.Tensor], **options):
    """``loss_class(**options)`` with its AvgNonZero count taken from the label structure."""
    from pytorch_metric_learning.reducers import DoNothingReducer

    loss = loss_class(reducer=DoNothingReducer(), **options)

    def value(embeddings, labels):
        losses = loss(embeddings, labels)["loss"]["losses"]
        keep = counted(labels)
        if not torch.is_tensor(losses) or not keep.any():
            return (embeddings * 0).sum()  # PML's zero loss
        return losses[keep].mean()

    return value


def _pair_counts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    return same.sum(1) - 1, (~same).sum(1)


def supcon_counted(labels):
    """-log softmax of a positive is > 0 exactly when the softmax has a second member."""
    positives, negatives = _pair_counts(labels)
    return (positives >= 1) & (positives + negatives >= 2)


def circle_counted(labels):
    """softplus(.) > 0 everywhere; PML zeroes the anchors without a positive or a negative."""
    positives, negatives = _pair_counts(labels)
    return (positives >= 1) & (negatives >= 1)


def pml_cases() -> list[PmlCase]:
    from pytorch_metric_learning import losses, miners

    def mined(loss, epsilon):
        return lambda x, y: loss(x, y, miners.MultiSimilarityMiner(epsilon=epsilon)(x, y))

    return [
        PmlCase("contrastive", presets.contrastive(), losses.ContrastiveLoss()),
        PmlCase(
            "contrastive-margins", presets.contrastive(0.3, 0.8), losses.ContrastiveLoss(pos_margin=0.3, neg_margin=0.8)
        ),
        PmlCase("ntxent", presets.ntxent(), losses.NTXentLoss()),
        PmlCase("ntxent-low-temperature", presets.ntxent(0.02), losses.NTXentLoss(temperature=0.02)),
        PmlCase("generalized-lifted", presets.generalized_lifted_structure(), losses.GeneralizedLiftedStructureLoss()),
        PmlCase(
            "generalized-lifted-margins",
            presets.generalized_lifted_structure(0.6, 0.1),
            losses.GeneralizedLiftedStructureLoss(neg_margin=0.6, pos_margin=0.1),
        ),
        PmlCase("tuplet", presets.tuplet_margin(), losses.TupletMarginLoss(), smooth_at_exact_similarities=False),
        PmlCase(
            "tuplet-large-scale",
            presets.tuplet_margin(10.0, 100.0),
            losses.TupletMarginLoss(margin=10.0, scale=100.0),
            smooth_at_exact_similarities=False,
        ),
        PmlCase(
            "supcon", presets.supcon(), losses.SupConLoss(), exact=exactly_counted(losses.SupConLoss, supcon_counted)
        ),
        PmlCase(
            "supcon-low-temperature",
            presets.supcon(0.02),
            losses.SupConLoss(temperature=0.02),
            exact=exactly_counted(losses.SupConLoss, supcon_counted, temperature=0.02),
        ),
        PmlCase("multi-similarity", presets.multi_similarity(mining_epsilon=None), losses.MultiSimilarityLoss()),
        PmlCase("multi-similarity-mined", presets.multi_similarity(), mined(losses.MultiSimilarityLoss(), 0.1)),
        PmlCase(
            "circle", presets.circle(), losses.CircleLoss(), exact=exactly_counted(losses.CircleLoss, circle_counted)
        ),
        PmlCase(
            "circle-large-gamma",
            presets.circle(0.25, 256.0),
            losses.CircleLoss(m=0.25, gamma=256.0),
            exact=exactly_counted(losses.CircleLoss, circle_counted, m=0.25, gamma=256.0),
        ),
    ]


def value_and_grad(fn, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = embeddings.detach().clone().requires_grad_()
    value = fn(x, labels)
    value.backward()
    return value.detach(), x.grad if x.grad is not None else torch.zeros_like(x)


def assert_equal_losses(actual_fn, expected_fn, embeddings, labels, msg: str = "", float32_atol: float = 1e-7) -> None:
    """Value and gradient within float64 1e-6 / float32 1e-5 relative (gradients at the scale of the
    largest entry), and ``float32_atol`` absolute."""
    float64 = embeddings.dtype == torch.float64
    rtol, atol = (1e-6, 1e-9) if float64 else (1e-5, float32_atol)
    expected = value_and_grad(expected_fn, embeddings, labels)
    actual = value_and_grad(actual_fn, embeddings, labels)
    torch.testing.assert_close(actual[0], expected[0], rtol=rtol, atol=atol, msg=lambda m: f"value {msg}: {m}")
    grad_atol = atol + rtol * expected[1].abs().max().item()
    torch.testing.assert_close(actual[1], expected[1], rtol=rtol, atol=grad_atol, msg=lambda m: f"gradient {msg}: {m}")


def assert_matches_pml(case: PmlCase, embeddings, labels, msg: str = "") -> None:
    assert_equal_losses(
        lambda x, y: pair_rule_loss(x, y, case.rule), case.oracle, embeddings, labels, f"{case.id} {msg}"
    )


def structures(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The label layouts of embedplug's mining tests plus pairs and one pair among singletons."""
    layouts = label_structures(n, generator)
    layouts["pairs"] = torch.arange(n) // 2
    one_pair = torch.arange(n)
    one_pair[: min(n, 2)] = 0
    layouts["one_pair_rest_singletons"] = one_pair
    return layouts


def well_separated(labels: torch.Tensor, dim: int, dtype, generator) -> torch.Tensor:
    """Each class a tight cluster around its own random centre: easy pairs, whose tiny terms a
    difference of two large log-sum-exps would lose in float32."""
    centres = torch.randn(int(labels.max()) + 1, dim, generator=generator, dtype=dtype) * 4
    return centres[labels] + 0.02 * torch.randn(labels.numel(), dim, generator=generator, dtype=dtype)


def duplicates(n: int, dim: int, dtype, generator) -> torch.Tensor:
    """Copies of four points: equal measures everywhere, exact zeros of the distances."""
    points = torch.randn(4, dim, generator=generator, dtype=dtype)
    return points[torch.randint(0, 4, (n,), generator=generator)]
