"""Forward+backward of the label-aware contrastive losses (SupCon, multi-similarity with its miner,
circle): embedplug fused vs pytorch-metric-learning 2.9 on the same P x K inputs, with two GEMM floors:
one N x D by D x N product (the batch-hard cases' floor, the forward's similarities alone) and the
forward+backward floor, that product and the gradient's N x N by N x D one."""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug import _extension
from embedplug.bench.batch_hard_cases import Inputs, gemm_floor, make_inputs
from embedplug.functional import circle_loss, multi_similarity_loss, supervised_contrastive_loss

__all__ = ["LOSSES", "Inputs", "available_implementations", "make_inputs"]


def forward_backward_gemm_floor(inputs: Inputs) -> None:
    """The products an exact loss with dense pair weights W cannot avoid: the similarities S = E E^T
    forward, and the gradient (W + W^T) E backward (one product, since S is symmetric)."""
    with torch.no_grad():
        scores = torch.mm(inputs.embeddings, inputs.embeddings.t())
        torch.mm(scores, inputs.embeddings)


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


def multi_similarity_all_pairs_fused(inputs: Inputs) -> None:
    _backward(multi_similarity_loss(inputs.embeddings, inputs.labels, mining_epsilon=None), inputs)


def multi_similarity_all_pairs_pml(inputs: Inputs) -> None:
    from pytorch_metric_learning import losses

    _backward(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(inputs.embeddings, inputs.labels), inputs)


def circle_fused(inputs: Inputs) -> None:
    _backward(circle_loss(inputs.embeddings, inputs.labels), inputs)


def circle_pml(inputs: Inputs) -> None:
    from pytorch_metric_learning import losses

    _backward(losses.CircleLoss(m=0.4, gamma=80)(inputs.embeddings, inputs.labels), inputs)


FLOOR = "gemm floor (torch.mm)"
FORWARD_BACKWARD_FLOOR = "gemm floor fwd+bwd (2 torch.mm)"
PML = "pytorch-metric-learning 2.9"
_FLOORS = {FLOOR: gemm_floor, FORWARD_BACKWARD_FLOOR: forward_backward_gemm_floor}

# loss name -> implementation name -> fn(inputs)
LOSSES: dict[str, dict[str, Callable[[Inputs], None]]] = {
    "SupConLoss": {**_FLOORS, "embedplug fused": supcon_fused, PML: supcon_pml},
    "MultiSimilarityLoss (+ miner)": {**_FLOORS, "embedplug fused": multi_similarity_fused, PML: multi_similarity_pml},
    "MultiSimilarityLoss (all pairs)": {**_FLOORS, "embedplug fused": multi_similarity_all_pairs_fused, PML: multi_similarity_all_pairs_pml},
    "CircleLoss": {**_FLOORS, "embedplug fused": circle_fused, PML: circle_pml},
}


def available_implementations(loss: str) -> dict[str, Callable[[Inputs], None]]:
    """The implementations of ``loss`` importable here (pytorch-metric-learning is optional)."""
    found = {}
    for name, fn in LOSSES[loss].items():
        if name == "embedplug fused" and not _extension.has_kernel("pair_rule_forward", "cpu"):
            continue
        if name == PML:
            try:
                import pytorch_metric_learning  # noqa: F401
            except ImportError:
                continue
        found[name] = fn
    return found
