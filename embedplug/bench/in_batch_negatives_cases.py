"""Forward+backward of GISTEmbedLoss and MultipleNegativesRankingLoss in each implementation, on identical inputs.

GIST uses sentence-transformers' defaults (temperature 0.01, absolute margin 0, anchor-anchor and
positive-positive contrast) on (anchor, positive) pairs with a guide of the same width. MNRL runs at its
defaults (cos_sim, scale 20) in three option sets: plain, symmetric (query-to-doc and doc-to-query,
per-direction softmax: MultipleNegativesSymmetricRankingLoss) and hardness-weighted (Lan et al. 2025:
in-batch negatives, strength 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

import torch

from embedplug import _extension
from embedplug.bench.peers import SENTENCE_TRANSFORMERS
from embedplug.functional import gist_embed_loss, multiple_negatives_ranking_loss
from embedplug.reference.masked_infonce import masked_infonce as reference_infonce

FLOOR = "gemm floor (torch.mm)"


@dataclass(frozen=True)
class Inputs:
    anchor: torch.Tensor  # [N, D], requires grad
    positive: torch.Tensor  # [N, D], requires grad
    guide_anchor: torch.Tensor  # [N, D]
    guide_positive: torch.Tensor  # [N, D], correlated with guide_anchor


def make_inputs(n: int, dim: int, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, dim, generator=generator).requires_grad_()
    positive = (anchor.detach() + torch.randn(n, dim, generator=generator)).requires_grad_()
    guide_anchor = torch.randn(n, dim, generator=generator)
    guide_positive = guide_anchor + torch.randn(n, dim, generator=generator)
    return Inputs(anchor, positive, guide_anchor, guide_positive)


def _backward(loss: torch.Tensor, inputs: Inputs) -> None:
    inputs.anchor.grad = inputs.positive.grad = None
    loss.backward()


def _gemm_floor(inputs: Inputs, student_blocks: int, guide_blocks: int) -> None:
    """The torch.mm calls an exact method cannot avoid: every N x N similarity block once forward,
    and each student block twice backward (grad rows = P C, grad columns = P^T R)."""
    a, p = inputs.anchor.detach(), inputs.positive.detach()
    with torch.no_grad():
        for _ in range(guide_blocks):
            torch.mm(inputs.guide_anchor, inputs.guide_positive.t())
        for _ in range(student_blocks):
            scores = torch.mm(a, p.t())
            torch.mm(scores, p)
            torch.mm(scores.t(), a)


def gist_floor(inputs: Inputs) -> None:
    _gemm_floor(inputs, student_blocks=3, guide_blocks=3)  # ap, aa, pp for student and guide


def gist_fused(inputs: Inputs) -> None:
    _backward(
        gist_embed_loss(inputs.anchor, inputs.positive, guide_anchor=inputs.guide_anchor, guide_positive=inputs.guide_positive),
        inputs,
    )


def gist_reference(inputs: Inputs) -> None:
    unit = torch.nn.functional.normalize
    loss, _ = reference_infonce(
        unit(inputs.anchor, dim=1), unit(inputs.positive, dim=1), unit(inputs.guide_anchor, dim=1),
        unit(inputs.guide_positive, dim=1), 100.0, "absolute", 0.0, True, False, inputs.anchor.shape[0], False,
    )
    _backward(loss.mean(), inputs)


def gist_sentence_transformers(inputs: Inputs) -> None:
    """sentence-transformers' GISTEmbedLoss.forward on these embeddings (its model calls bypassed)."""
    from sentence_transformers.sentence_transformer.losses import gist_embed

    loss = gist_embed.GISTEmbedLoss.__new__(gist_embed.GISTEmbedLoss)
    torch.nn.Module.__init__(loss)
    loss.temperature, loss.margin_strategy, loss.margin = 0.01, "absolute", 0.0
    loss.contrast_anchors = loss.contrast_positives = True
    loss.gather_across_devices = loss.must_retokenize = False
    loss.similarity_fct = torch.nn.CosineSimilarity(dim=-1)
    loss.cross_entropy_loss = torch.nn.CrossEntropyLoss()
    student, guide = object(), object()
    loss.__dict__.update(model=student, guide=guide)
    columns = {id(student): [inputs.anchor, inputs.positive], id(guide): [inputs.guide_anchor, inputs.guide_positive]}
    with mock.patch.object(gist_embed, "embed_columns", lambda model, _: columns[id(model)]):
        _backward(loss.forward([{}, {}], None), inputs)


# MultipleNegativesRankingLoss option sets measured, and the student blocks (N x N GEMMs) each needs.
MNRL_OPTION_SETS: dict[str, dict] = {
    "plain": {},
    "symmetric": {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"},
    "hardness": {"hardness_mode": "in_batch_negatives", "hardness_strength": 9.0},
}
_MNRL_STUDENT_BLOCKS = {"plain": 1, "symmetric": 2, "hardness": 1}


def mnrl_implementations(option_set: str = "plain") -> dict[str, Callable[[Inputs], None]]:
    """The MNRL implementations for one of :data:`MNRL_OPTION_SETS`, by name."""
    options = MNRL_OPTION_SETS[option_set]

    def floor(inputs: Inputs) -> None:
        _gemm_floor(inputs, student_blocks=_MNRL_STUDENT_BLOCKS[option_set], guide_blocks=0)

    def fused(inputs: Inputs) -> None:
        _backward(multiple_negatives_ranking_loss(inputs.anchor, inputs.positive, **options), inputs)

    def sentence_transformers(inputs: Inputs) -> None:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        loss = MultipleNegativesRankingLoss(None, **options)
        _backward(loss.compute_loss_from_embeddings([inputs.anchor, inputs.positive], None), inputs)

    return {FLOOR: floor, "embedplug fused": fused, SENTENCE_TRANSFORMERS: sentence_transformers}



GIST_IMPLEMENTATIONS: dict[str, Callable[[Inputs], None]] = {
    FLOOR: gist_floor,
    "embedplug fused": gist_fused,
    "embedplug reference": gist_reference,
    SENTENCE_TRANSFORMERS: gist_sentence_transformers,
}
MNRL_IMPLEMENTATIONS: dict[str, Callable[[Inputs], None]] = mnrl_implementations("plain")


def available(implementations: dict[str, Callable[[Inputs], None]]) -> dict[str, Callable[[Inputs], None]]:
    """The implementations importable here (sentence-transformers is optional)."""
    found = {}
    for name, fn in implementations.items():
        if name == "embedplug fused" and not _extension.STATUS.loaded:
            continue
        if name.startswith("sentence-transformers"):
            try:
                import sentence_transformers  # noqa: F401
            except ImportError:
                continue
        found[name] = fn
    return found
