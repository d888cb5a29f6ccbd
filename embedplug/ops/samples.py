"""Inputs that stress rounding and degenerate structure, shared by the specs' conformance cases.

Each generator is deterministic (fixed seeds), so a failing row of the conformance table names a
case that reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Larger than the CPU kernels' 256-row tiles, so the last tile is ragged.
RAGGED_ROWS = 300


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled_batches(dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(regime, embeddings [N, D], labels [N])`` over the label structures and rounding regimes
    every label-aware op must survive."""
    g = _generator(0)
    x = torch.randn(16, 12, generator=g, dtype=torch.float64)
    pairs = torch.arange(16) // 2
    yield "random pairs", x.to(dtype), pairs
    duplicated = x.clone()
    duplicated[1] = duplicated[0]
    duplicated[5] = duplicated[2]  # a duplicate across classes: a negative at distance 0
    yield "exact duplicate rows", duplicated.to(dtype), pairs
    scaled = x.clone()
    scaled[1] = 3.0 * scaled[0]
    scaled[7] = 0.25 * scaled[6]
    yield "scaled duplicate rows", scaled.to(dtype), pairs
    centres = 8.0 * torch.randn(4, 12, generator=g, dtype=torch.float64)
    classes = torch.arange(16) % 4
    separated = centres[classes] + 0.01 * torch.randn(16, 12, generator=g, dtype=torch.float64)
    yield "well-separated classes", separated.to(dtype), classes
    yield "one class", x[:9].to(dtype), torch.zeros(9, dtype=torch.int64)
    yield "all distinct", x[:10].to(dtype), torch.arange(10)
    yield "N = 1", x[:1].to(dtype), torch.zeros(1, dtype=torch.int64)
    ragged = torch.randn(RAGGED_ROWS, 8, generator=g, dtype=torch.float64)
    yield "ragged last tile", ragged.to(dtype), torch.randint(0, 30, (RAGGED_ROWS,), generator=g)
    wide = torch.randn(12, 20, generator=g, dtype=torch.float64).to(dtype)
    yield "non-contiguous", wide[:, ::2], torch.arange(12) // 3


def paired_batches(dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(regime, anchors [N, D], candidates [M, D])`` for the in-batch-negative ops: the positives
    first, then whole columns of hard negatives."""
    g = _generator(1)
    anchors = torch.randn(8, 6, generator=g, dtype=torch.float64)
    candidates = torch.randn(16, 6, generator=g, dtype=torch.float64)
    yield "random", anchors.to(dtype), candidates.to(dtype)
    duplicated = candidates.clone()
    duplicated[:8] = anchors  # every positive equal to its anchor
    duplicated[9] = anchors[0]  # and a negative equal to another row's anchor
    yield "exact duplicate rows", anchors.to(dtype), duplicated.to(dtype)
    scaled = candidates.clone()
    scaled[:8] = 3.0 * anchors
    yield "scaled duplicate rows", anchors.to(dtype), scaled.to(dtype)
    yield "N = 1", anchors[:1].to(dtype), candidates[:2].to(dtype)
    many = torch.randn(RAGGED_ROWS, 6, generator=g, dtype=torch.float64)
    yield "ragged last tile", many.to(dtype), torch.cat([many + 0.1, torch.randn(RAGGED_ROWS, 6, generator=g, dtype=torch.float64)]).to(dtype)
    wide = torch.randn(8, 12, generator=g, dtype=torch.float64).to(dtype)
    yield "non-contiguous", wide[:, ::2], torch.randn(16, 6, generator=g, dtype=torch.float64).to(dtype).t().contiguous().t()


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (the in-batch ops take cosine inputs normalised)."""
    return torch.nn.functional.normalize(x, dim=-1)
