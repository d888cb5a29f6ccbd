"""Label-aware contrastive losses for labelled batches (P classes x K samples, e.g. PKBatchSampler):
SupConLoss, MultiSimilarityLoss and CircleLoss, equal to pytorch-metric-learning 2.9's, fused."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from embedplug.functional.labelled_contrastive import circle_loss, multi_similarity_loss, supervised_contrastive_loss
from embedplug.losses.base import LabelledBatchLoss

KHOSLA_2020_CITATION = """
@inproceedings{khosla2020supervised,
    title={Supervised Contrastive Learning},
    author={Prannay Khosla and Piotr Teterwak and Chen Wang and Aaron Sarna and Yonglong Tian and Phillip Isola and Aaron Maschinot and Ce Liu and Dilip Krishnan},
    booktitle={Advances in Neural Information Processing Systems},
    volume={33},
    pages={18661--18673},
    year={2020}
}
"""

WANG_2019_CITATION = """
@inproceedings{wang2019multi,
    title={Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning},
    author={Xun Wang and Xintong Han and Weilin Huang and Dengke Dong and Matthew R. Scott},
    booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
    pages={5022--5030},
    year={2019}
}
"""

SUN_2020_CITATION = """
@inproceedings{sun2020circle,
    title={Circle Loss: A Unified Perspective of Pair Similarity Optimization},
    author={Yifan Sun and Changmao Cheng and Yuhan Zhang and Chi Zhang and Liang Zheng and Zhongdao Wang and Yichen Wei},
    booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
    pages={6398--6407},
    year={2020}
}
"""


class SupConLoss(LabelledBatchLoss):
    """Supervised contrastive loss (Khosla et al. 2020) on the cosine similarities of a labelled batch.

    Per anchor with positives, ``-mean_p log softmax_{j != i}(s_ij / temperature)[p]``, averaged over
    the anchors whose loss is > 0 (pytorch-metric-learning's ``SupConLoss`` with its
    ``AvgNonZeroReducer``: same numbers and gradients). The fused kernel never builds the N x N
    similarity matrix.

    Args:
        model: the SentenceTransformer being trained.
        temperature: softmax temperature (0.1 as in the paper and PML).

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    embedplug_ops = ("pair_rule_forward",)

    def __init__(self, model: nn.Module, temperature: float = 0.1) -> None:
        super().__init__(model)
        if not temperature > 0:
            raise ValueError(f"SupConLoss: temperature must be positive, got {temperature}")
        self.temperature = temperature

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return supervised_contrastive_loss(embeddings, labels, temperature=self.temperature)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @property
    def citation(self) -> str:
        return KHOSLA_2020_CITATION


class MultiSimilarityLoss(LabelledBatchLoss):
    """Multi-similarity loss (Wang et al. 2019) on the cosine similarities of a labelled batch.

    Per anchor ``(1/alpha) log(1 + sum_p e^{alpha (base - s_p)}) + (1/beta) log(1 + sum_n
    e^{beta (s_n - base)})``, averaged over all anchors, on the pairs pytorch-metric-learning's
    ``MultiSimilarityMiner(epsilon=mining_epsilon)`` picks (the paper's pair mining; the default) or,
    with ``mining_epsilon=None``, on every pair. Equal to PML's ``MultiSimilarityLoss(alpha, beta,
    base)`` given those pairs, without its N x N matrices.

    Args:
        model: the SentenceTransformer being trained.
        alpha: scale of the positive pairs.
        beta: scale of the negative pairs.
        base: the similarity offset (lambda in the paper).
        mining_epsilon: the miner's margin, or None for all pairs.

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    embedplug_ops = ("pair_rule_forward",)

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        mining_epsilon: float | None = 0.1,
    ) -> None:
        super().__init__(model)
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.mining_epsilon = mining_epsilon

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return multi_similarity_loss(
            embeddings, labels, alpha=self.alpha, beta=self.beta, base=self.base, mining_epsilon=self.mining_epsilon
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "base": self.base, "mining_epsilon": self.mining_epsilon}

    @property
    def citation(self) -> str:
        return WANG_2019_CITATION


class CircleLoss(LabelledBatchLoss):
    """Circle loss (Sun et al. 2020) on the cosine similarities of a labelled batch.

    Per anchor with positives and negatives ``softplus(logsumexp_p(-gamma [1 + m - s_p]_+ (s_p - 1 + m))
    + logsumexp_n(gamma [s_n + m]_+ (s_n - m)))``, averaged over the anchors whose loss is > 0
    (pytorch-metric-learning's ``CircleLoss``: same numbers and gradients), fused.

    Args:
        model: the SentenceTransformer being trained.
        m: the relaxation margin (0.4 for fine-grained retrieval, as PML's default).
        gamma: the scale (80).

    Inputs: single texts with integer class labels; batches need classes with at least 2 samples.
    """

    embedplug_ops = ("pair_rule_forward",)

    def __init__(self, model: nn.Module, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__(model)
        self.m = m
        self.gamma = gamma

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        return circle_loss(embeddings, labels, m=self.m, gamma=self.gamma)

    def get_config_dict(self) -> dict[str, Any]:
        return {"m": self.m, "gamma": self.gamma}

    @property
    def citation(self) -> str:
        return SUN_2020_CITATION
