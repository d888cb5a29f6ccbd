"""pytorch-metric-learning 2.9's ContrastiveLoss, NTXentLoss, GeneralizedLiftedStructureLoss and
TupletMarginLoss as pair rules (:mod:`embedplug.pair_rules.presets`), registered with a ``PML``
prefix: sentence-transformers' ``ContrastiveLoss`` (a different loss on text pairs) keeps its name."""

from __future__ import annotations

from typing import Any

from torch import nn

from embedplug.losses.base import HERMANS_2017_CITATION
from embedplug.losses.pair_rule import PairRuleLoss
from embedplug.pair_rules import presets

HADSELL_2006_CITATION = """
@inproceedings{hadsell2006dimensionality,
    title={Dimensionality Reduction by Learning an Invariant Mapping},
    author={Raia Hadsell and Sumit Chopra and Yann LeCun},
    booktitle={IEEE Computer Society Conference on Computer Vision and Pattern Recognition},
    volume={2},
    pages={1735--1742},
    year={2006}
}
"""

CHEN_2020_CITATION = """
@inproceedings{chen2020simple,
    title={A Simple Framework for Contrastive Learning of Visual Representations},
    author={Ting Chen and Simon Kornblith and Mohammad Norouzi and Geoffrey Hinton},
    booktitle={Proceedings of the 37th International Conference on Machine Learning},
    pages={1597--1607},
    year={2020}
}
"""

YU_2019_CITATION = """
@inproceedings{yu2019deep,
    title={Deep Metric Learning With Tuplet Margin Loss},
    author={Baosheng Yu and Dacheng Tao},
    booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision},
    pages={6490--6499},
    year={2019}
}
"""


class PMLContrastiveLoss(PairRuleLoss):
    """pytorch-metric-learning's ``ContrastiveLoss(pos_margin, neg_margin)`` (Hadsell et al. 2006):
    on euclidean distances of the normalised embeddings, the mean of the positive pairs'
    ``[d - pos_margin]_+`` that are > 0 plus the mean of the negative pairs' ``[neg_margin - d]_+``
    that are > 0 (its ``AvgNonZeroReducer`` per pair). Same value and gradient as PML.

    Not sentence-transformers' ``ContrastiveLoss``, which scores labelled text pairs.

    Args:
        model: the SentenceTransformer being trained.
        pos_margin: positives closer than this cost nothing.
        neg_margin: negatives farther than this cost nothing.
        gather_across_devices: gather embeddings and labels from every rank.
    """

    rule_citation = HADSELL_2006_CITATION

    def __init__(
        self, model: nn.Module, pos_margin: float = 0.0, neg_margin: float = 1.0, gather_across_devices: bool = False
    ) -> None:
        super().__init__(
            model, presets.contrastive(pos_margin, neg_margin), gather_across_devices=gather_across_devices
        )
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def get_config_dict(self) -> dict[str, Any]:
        return {"pos_margin": self.pos_margin, "neg_margin": self.neg_margin, **self._gather_config()}


class PMLNTXentLoss(PairRuleLoss):
    """pytorch-metric-learning's ``NTXentLoss(temperature)`` with class labels (SimCLR's loss, Chen
    et al. 2020, supervised): per positive pair ``-log(softmax + tiny)`` of ``s_ap / T`` among the
    pair and the anchor's negatives, on cosine similarities; the mean over positive pairs. Same value
    and gradient as PML.

    Args:
        model: the SentenceTransformer being trained.
        temperature: the softmax temperature.
        gather_across_devices: gather embeddings and labels from every rank.
    """

    rule_citation = CHEN_2020_CITATION

    def __init__(self, model: nn.Module, temperature: float = 0.07, gather_across_devices: bool = False) -> None:
        super().__init__(model, presets.ntxent(temperature), gather_across_devices=gather_across_devices)
        self.temperature = temperature

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, **self._gather_config()}


class PMLGeneralizedLiftedStructureLoss(PairRuleLoss):
    """pytorch-metric-learning's ``GeneralizedLiftedStructureLoss(neg_margin, pos_margin)`` (Hermans
    et al. 2017, eq. 4): per anchor ``[LSE_p(d_p - pos_margin) + LSE_n(neg_margin - d_n)]_+`` on
    euclidean distances of the normalised embeddings, the mean over all anchors. Same value and
    gradient as PML.

    Args:
        model: the SentenceTransformer being trained.
        neg_margin: the negatives' margin.
        pos_margin: the positives' margin.
        gather_across_devices: gather embeddings and labels from every rank.
    """

    rule_citation = HERMANS_2017_CITATION

    def __init__(
        self, model: nn.Module, neg_margin: float = 1.0, pos_margin: float = 0.0, gather_across_devices: bool = False
    ) -> None:
        super().__init__(
            model,
            presets.generalized_lifted_structure(neg_margin, pos_margin),
            gather_across_devices=gather_across_devices,
        )
        self.neg_margin, self.pos_margin = neg_margin, pos_margin

    def get_config_dict(self) -> dict[str, Any]:
        return {"neg_margin": self.neg_margin, "pos_margin": self.pos_margin, **self._gather_config()}


class PMLTupletMarginLoss(PairRuleLoss):
    """pytorch-metric-learning's ``TupletMarginLoss(margin, scale)`` (Yu and Tao 2019): per positive
    pair ``log(1 + sum_n e^{scale (s_n - cos(acos(s_p) - margin))})`` on cosine similarities, the
    margin in degrees; the mean over positive pairs. Same value and gradient as PML.

    Args:
        model: the SentenceTransformer being trained.
        margin: the angular margin, in degrees.
        scale: the logit scale.
        gather_across_devices: gather embeddings and labels from every rank.
    """

    rule_citation = YU_2019_CITATION

    def __init__(
        self, model: nn.Module, margin: float = 5.73, scale: float = 64.0, gather_across_devices: bool = False
    ) -> None:
        super().__init__(model, presets.tuplet_margin(margin, scale), gather_across_devices=gather_across_devices)
        self.margin, self.scale = margin, scale

    def get_config_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "scale": self.scale, **self._gather_config()}
