"""Forward+backward of the label-aware contrastive losses (SupCon, multi-similarity with its miner,
circle): embedplug fused vs pytorch-metric-learning 2.9, with the GEMM floor of the batch-hard cases
(one N x D by D x N product) on the same P x K inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug import _extension
from embedplug.bench.batch_hard_cases import Inputs, gemm_floor, make_inputs
from embedplug.functional import circle_loss, multi_similarity_loss, supervised_contrastive_loss

__all__ = ["LOSSES", "Inputs", "available_implementations", "make_inputs"]


def _backward(loss: torch.Tensor, inputs: Inputs) -> None:
    inputs.embeddings.grad = None
    loss.backward()


def supcon_fused(inputs: Inputs) -> None:
    _backward(supervised_contrastive_loss(inputs.embeddings, inputs.labels), inputs)


def supcon_pml(inputs: Inputs) -> None:
    from pytorch_metric_learning import losses

    _backward(losses.SupConLoss(temperature=0.1)(inputs.embeddings, inputs.labels), inputs)


def multi_similarity_fused(inputs: Inputs) -> None:
    _backward(multi_similarity_loss(inputs.embeddings, inputs.labels, mining_epsilon=0.1), inputs)


def multi_similarity_pml(inputs: Inputs) -> None:
    from pytorch_metric_learning import losses, miners

    pairs = miners.MultiSimilarityMiner(epsilon=0.1)(inputs.embeddings, inputs.labels)
    _backward(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(inputs.embeddings, inputs.labels, pairs), inputs)


def circle_fused(inputs: Inputs) -> None:
    _backward(circle_loss(inputs.embeddings, inputs.labels), inputs)


def circle_pml(inputs: Inputs) -> None:
    from pytorch_metric_learning import losses

    _backward(losses.CircleLoss(m=0.4, gamma=80)(inputs.embeddings, inputs.labels), inputs)


FLOOR = "gemm floor (torch.mm)"
PML = "pytorch-metric-learning 2.9"

# loss name -> implementation name -> fn(inputs)
LOSSES: dict[str, dict[str, Callable[[Inputs], None]]] = {
    "SupConLoss": {FLOOR: gemm_floor, "embedplug fused": supcon_fused, PML: supcon_pml},
    "MultiSimilarityLoss (+ miner)": {FLOOR: gemm_floor, "embedplug fused": multi_similarity_fused, PML: multi_similarity_pml},
    "CircleLoss": {FLOOR: gemm_floor, "embedplug fused": circle_fused, PML: circle_pml},
}


def available_implementations(loss: str) -> dict[str, Callable[[Inputs], None]]:
    """The implementations of ``loss`` importable here (pytorch-metric-learning is optional)."""
    found = {}
    for name, fn in LOSSES[loss].items():
        if name == "embedplug fused" and not _extension.has_kernel("supcon_loss_forward", "cpu"):
            continue
        if name == PML:
            try:
                import pytorch_metric_learning  # noqa: F401
            except ImportError:
                continue
        found[name] = fn
    return found
