"""Supervised contrastive loss (Khosla et al., 2020), following the sentence-transformers loss contract."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def supervised_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """SupCon ``L_out`` of a batch: ``embeddings`` (batch, dim), integer ``labels`` (batch,); a scalar.

    For every anchor ``i`` whose label occurs again in the batch, average over its positives ``p`` the
    term ``-log softmax_{a != i}(z_i . z_a / temperature)[p]`` (``z`` = L2-normalized embeddings), then
    average over those anchors. Anchors without a positive contribute nothing.
    """
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(f"expected {embeddings.shape[0]} labels (one per embedding), got {labels.numel()}")
    labels = labels.view(-1)
    # At least float32 (float64 stays float64): logits up to 1/temperature go through exp, and half
    # precision under autocast would lose the small probabilities the loss is made of.
    normalized = F.normalize(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)), dim=-1)
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive_mask = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    has_positive = positive_mask.any(dim=1)
    if not has_positive.any():
        # Keep the graph connected so backward() works; no anchor has anything to pull towards.
        return embeddings.sum() * 0.0

    # Only anchors with a positive: a row whose only other entries are masked would be all -inf and
    # turn into NaN gradients even though the row is never used.
    logits = normalized[has_positive] @ normalized.T / temperature
    logits = logits.masked_fill(self_mask[has_positive], float("-inf"))  # an anchor is not its own candidate
    log_probabilities = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = positive_mask[has_positive]
    # masked_fill, not multiplication: the -inf on the diagonal times 0 would be NaN.
    positive_log_probability_sum = log_probabilities.masked_fill(~positives, 0.0).sum(dim=1)
    return -(positive_log_probability_sum / positives.sum(dim=1)).mean()


class ExampleSupConLoss(nn.Module):
    """Supervised contrastive loss on normalized sentence embeddings (Khosla et al., 2020).

    Pulls together every pair of texts that share a label and pushes apart all others in the batch.
    Expects a dataset with one text column and an integer ``label`` column; batches need several texts
    per label, so pair it with a label-aware batch sampler.

    Args:
        model: the SentenceTransformer being trained (stored as ``self.model``, as sentence-transformers expects).
        temperature: softmax temperature; smaller values focus on the hardest negatives. 0.1 as in the paper.
    """

    # embedplug's loss contract (embedplug.hookspecs): this loss trains on texts with class labels, so
    # `embedplug train` accepts it on labelled data.
    embedplug_label_aware = True

    def __init__(self, model: nn.Module, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.temperature = temperature

    def forward(self, sentence_features: list[dict[str, Tensor]], labels: Tensor) -> Tensor:
        embeddings = self.model(sentence_features[0])["sentence_embedding"]
        return supervised_contrastive_loss(embeddings, labels, self.temperature)

    def get_config_dict(self) -> dict[str, Any]:
        # sentence-transformers writes this into the model card's training details.
        return {"temperature": self.temperature}

    @property
    def citation(self) -> str:
        return """
@inproceedings{khosla2020supervised,
    title={Supervised Contrastive Learning},
    author={Prannay Khosla and Piotr Teterwak and Chen Wang and Aaron Sarna and Yonglong Tian and Phillip Isola and Aaron Maschinot and Ce Liu and Dilip Krishnan},
    booktitle={Advances in Neural Information Processing Systems},
    volume={33},
    pages={18661--18673},
    year={2020}
}
"""
