"""How a batch triplet loss gets its distances: the fused kernel, or a materialised distance matrix.

The kernels' cosine distance is ``1 - <u_a, u_b>`` as computed (sentence-transformers 6.2). From
6.3 sentence-transformers clamps it at 0 and zeroes the diagonal (``StSemantics.cosine_distance_clamped``).
The two differ only where ``1 - <u_a, u_b>`` rounds below 0, i.e. for (near-)parallel rows, and on the
diagonal, which the losses read only through rounding-level terms, except for an all-zero row (its
``1 - cos(a, a)`` is 1), which semi-hard's masked-maximum fallback reads. So under 6.3 the kernel still runs
unless the batch holds a near-parallel pair or an all-zero row (found by one fused mining pass,
about 0.6 of a GEMM, O(N) memory); such a batch takes
the exact clamped matrix (O(N^2) memory), since a clamped distance changes which pair is mined.
That check is a data-dependent branch: under ``torch.compile`` it is a graph break, so
``fullgraph=True`` fails for the cosine distance under 6.3 (until the kernels clamp it themselves).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug._validation import check_distance_matrix
from embedplug.distances import kernel_distance
from embedplug.ops import batch_hard_mining
from embedplug.ops.batch_hard import pairwise_distances
from embedplug.st_version import StSemantics, semantics_for

# A pair whose kernel similarity is within this many D * eps of 1 may round to a negative distance
# in sentence-transformers' own GEMM (each GEMM's error on unit rows is below D * eps).
_NEAR_PARALLEL_EPS_FACTOR = 4
# F.normalize's default eps: a row no longer than this keeps its length (a zero row stays zero).
_NORMALIZE_EPS = 1e-12


def cosine_distance_matrix(embeddings: torch.Tensor, clamped: bool) -> torch.Tensor:
    """[N, D] -> [N, N] sentence-transformers' ``BatchHardTripletLossDistanceFunction.cosine_distance``:
    ``1 - cos`` (6.2), and with ``clamped`` (6.3) clamped at 0 with a zero diagonal, in its operation order."""
    distances = pairwise_distances(embeddings, "cosine")
    if clamped:
        distances = distances.clamp(min=0.0)
        distances.fill_diagonal_(0.0)
    return distances


def has_near_parallel_pair(embeddings: torch.Tensor) -> bool:
    """Whether two different rows of ``embeddings`` [N, D] have a cosine similarity within rounding
    of 1 (or above it): the pairs whose clamped cosine distance may differ from ``1 - cos``.

    With every row its own class, batch-hard mining's nearest "negative" is each row's nearest other
    row, so the fused mining kernel (upper-triangular tiles, about 0.6 of one GEMM) answers it; a
    row without a winning negative reports its own distance, about 0, and so is flagged too (the
    exact matrix then runs: slower, never wrong).
    """
    n = embeddings.shape[0]
    if n < 2:
        return False
    distinct = torch.arange(n, device=embeddings.device)
    distances, _ = batch_hard_mining(embeddings.detach(), distinct, "cosine")
    tolerance = _NEAR_PARALLEL_EPS_FACTOR * embeddings.shape[1] * torch.finfo(distances.dtype).eps
    return bool((distances[:, 1] < tolerance).any())


def has_degenerate_self_distance(embeddings: torch.Tensor) -> bool:
    """Whether a row's cosine distance to itself is not ~0: an (almost) all-zero row, which
    ``F.normalize`` leaves at zero length, so ``1 - cos(a, a)`` is 1 where 6.3's zeroed diagonal is 0."""
    norms = embeddings.detach().norm(dim=-1)
    return bool((norms <= _NORMALIZE_EPS).any())


def kernel_or_matrix(
    embeddings: torch.Tensor,
    distance: str | Callable[[torch.Tensor], torch.Tensor],
    caller: str,
    st_version: str | StSemantics | None = None,
) -> tuple[str | None, torch.Tensor | None]:
    """``(kernel distance name, None)`` when the fused kernel computes ``distance`` as the followed
    sentence-transformers release does, else ``(None, [N, N] distance matrix)`` for the reference path:
    any other callable, or a clamped-cosine batch with a near-parallel pair."""
    name = kernel_distance(distance)
    if name is None:
        return None, check_distance_matrix(distance(embeddings), embeddings, caller)
    if name == "cosine" and semantics_for(st_version).cosine_distance_clamped and (
        has_degenerate_self_distance(embeddings) or has_near_parallel_pair(embeddings)
    ):
        return None, cosine_distance_matrix(embeddings, clamped=True)
    return name, None
