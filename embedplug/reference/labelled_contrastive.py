"""Reference label-aware contrastive losses: pytorch-metric-learning 2.9's algorithms on N x N matrices.

One function per op (``supcon_loss_forward``, ``multi_similarity_loss_forward``,
``circle_loss_forward``), each returning PML's per-anchor losses before its reducer and the pairs
each anchor used: the fallback without the extension and the oracle the kernels are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, N] cosine similarities, as PML's ``CosineSimilarity`` (normalize, then matmul)."""
    unit = F.normalize(embeddings, p=2, dim=1)
    return unit @ unit.t()


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive [N, N], negative [N, N]) boolean masks: same label without the diagonal, other label."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return positive, ~same


def masked_logsumexp(x: torch.Tensor, keep: torch.Tensor, add_one: bool) -> torch.Tensor:
    """PML's ``lmu.logsumexp`` along rows: [N, N] -> [N]; 0 for a row that keeps nothing."""
    x = x.masked_fill(~keep, float("-inf"))
    if add_one:
        x = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    return torch.logsumexp(x, dim=1).masked_fill(~keep.any(dim=1), 0)


def _counts(positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return positive.sum(1), negative.sum(1)


def _poison_non_finite(losses: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """NaN loss (and gradient) for every anchor whose row has a non-finite similarity.

    PML's miner compares NaN as false and drops those pairs silently; embedplug returns NaN instead,
    as its other losses do for bad input. Adds exactly 0 to finite rows.
    """
    return losses + 0 * similarity.sum(1)


def supcon_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor SupCon: ``-mean_p log softmax_{j != i}(s_ij / T)[p]`` (0 without positives)."""
    positive, negative = pair_masks(labels)
    mat = cosine_similarity_matrix(embeddings) / temperature
    mat = mat - mat.max(dim=1, keepdim=True).values.detach()
    log_prob = mat - masked_logsumexp(mat, positive | negative, add_one=False).unsqueeze(1)
    pos = positive.to(mat.dtype)
    losses = -(pos * log_prob).sum(1) / (pos.sum(1) + torch.finfo(mat.dtype).tiny)
    return (losses, *_counts(positive, negative))


def multi_similarity_pairs(
    similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (positive, negative) pairs ``MultiSimilarityMiner(epsilon)`` keeps, as [N, N] masks.

    A positive is kept when ``s_ip - epsilon < max_n s_in``, a negative when ``s_in + epsilon >
    min_p s_ip`` (strict, so exact ties are left out); nothing is kept for an anchor without
    negatives (resp. positives).
    """
    hardest_negative = similarity.masked_fill(~negative, float("-inf")).max(dim=1, keepdim=True).values
    hardest_positive = similarity.masked_fill(~positive, float("inf")).min(dim=1, keepdim=True).values
    kept_positive = positive & (similarity - epsilon < hardest_negative)
    kept_negative = negative & (similarity + epsilon > hardest_positive)
    return kept_positive, kept_negative


def multi_similarity_loss_forward(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    base: float,
    mining_epsilon: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor multi-similarity loss over all pairs, or over the miner's pairs with ``mining_epsilon``."""
    positive, negative = pair_masks(labels)
    mat = cosine_similarity_matrix(embeddings)
    if mining_epsilon is not None:
        with torch.no_grad():
            positive, negative = multi_similarity_pairs(mat.detach(), positive, negative, mining_epsilon)
    pos_loss = (1.0 / alpha) * masked_logsumexp(alpha * (base - mat), positive, add_one=True)
    neg_loss = (1.0 / beta) * masked_logsumexp(beta * (mat - base), negative, add_one=True)
    return (_poison_non_finite(pos_loss + neg_loss, mat), *_counts(positive, negative))


def circle_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, m: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor circle loss ``softplus(lse_p + lse_n)``, 0 for an anchor without positives or negatives."""
    positive, negative = pair_masks(labels)
    mat = cosine_similarity_matrix(embeddings)
    pos_logits = -gamma * torch.relu((1 + m) - mat.detach()) * (mat - (1 - m))
    neg_logits = gamma * torch.relu(mat.detach() - (-m)) * (mat - m)
    lse_pos = masked_logsumexp(pos_logits, positive, add_one=False)
    lse_neg = masked_logsumexp(neg_logits, negative, add_one=False)
    losses = F.softplus(lse_pos + lse_neg, beta=1, threshold=20)
    has_both = positive.any(1) & negative.any(1)
    return (_poison_non_finite(losses * has_both.to(losses.dtype), mat), *_counts(positive, negative))
