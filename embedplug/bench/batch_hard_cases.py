"""Forward+backward of batch-hard triplet loss in each implementation, on identical inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from embedplug import _extension
from embedplug.bench.peers import SENTENCE_TRANSFORMERS
from embedplug.functional import batch_hard_triplet_loss
from embedplug.reference.batch_hard import batch_hard_mining as reference_mining
from embedplug.functional.batch_hard import triplet_margin_mean

MARGIN = 5.0


@dataclass(frozen=True)
class Inputs:
    embeddings: torch.Tensor  # [N, D], requires grad
    labels: torch.Tensor  # [N], P x K layout with K = 4


def make_inputs(n: int, dim: int, samples_per_class: int = 4, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator).requires_grad_()
    labels = torch.arange(n) // samples_per_class
    labels = labels[torch.randperm(n, generator=generator)]
    return Inputs(embeddings, labels)


def _backward(loss: torch.Tensor, inputs: Inputs) -> None:
    inputs.embeddings.grad = None
    loss.backward()


def embedplug_fused(inputs: Inputs) -> None:
    _backward(batch_hard_triplet_loss(inputs.embeddings, inputs.labels, margin=MARGIN), inputs)


def embedplug_reference(inputs: Inputs) -> None:
    distances, _ = reference_mining(inputs.embeddings, inputs.labels, "euclidean")
    _backward(triplet_margin_mean(distances[:, 0], distances[:, 1] + distances[:, 2], MARGIN), inputs)


def sentence_transformers(inputs: Inputs) -> None:
    from sentence_transformers.sentence_transformer.losses import BatchHardTripletLoss

    loss = BatchHardTripletLoss(None, margin=MARGIN).batch_hard_triplet_loss(inputs.labels, inputs.embeddings)
    _backward(loss, inputs)


def pytorch_metric_learning(inputs: Inputs) -> None:
    from pytorch_metric_learning import distances, losses, miners

    distance = distances.LpDistance(normalize_embeddings=False)
    miner = miners.BatchHardMiner(distance=distance)
    loss_fn = losses.TripletMarginLoss(margin=MARGIN, distance=distance)
    _backward(loss_fn(inputs.embeddings, inputs.labels, miner(inputs.embeddings, inputs.labels)), inputs)


def gemm_floor(inputs: Inputs) -> None:
    """One N x D by D x N product: the work any exact all-pairs method starts from."""
    with torch.no_grad():
        torch.mm(inputs.embeddings, inputs.embeddings.t())


IMPLEMENTATIONS: dict[str, Callable[[Inputs], None]] = {
    "gemm floor (torch.mm)": gemm_floor,
    "embedplug fused": embedplug_fused,
    "embedplug reference": embedplug_reference,
    SENTENCE_TRANSFORMERS: sentence_transformers,
    "pytorch-metric-learning": pytorch_metric_learning,
}


def available_implementations() -> dict[str, Callable[[Inputs], None]]:
    """The implementations importable here (peers are optional dependencies)."""
    found = {}
    for name, fn in IMPLEMENTATIONS.items():
        if name == "embedplug fused" and not _extension.STATUS.loaded:
            continue
        if name.startswith("sentence-transformers"):
            try:
                import sentence_transformers  # noqa: F401
            except ImportError:
                continue
        if name == "pytorch-metric-learning":
            try:
                import pytorch_metric_learning  # noqa: F401
            except ImportError:
                continue
        found[name] = fn
    return found
