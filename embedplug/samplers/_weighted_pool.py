"""A pool of items with integer weights: O(log n) weight updates and weighted draws (a Fenwick tree).

The P×K sampler draws a few classes per batch from up to millions, with weights that change after every batch
(inverse usage). Rebuilding cumulative sums per batch would cost O(classes) each time; the tree costs O(log n).
Weights are Python integers so that updates never accumulate rounding error: the same operations always give
the same draws, which the determinism contract (order = f(seed, epoch)) relies on.
"""

from __future__ import annotations

import numpy as np


class WeightedPool:
    """Items ``0..n-1`` with non-negative integer weights; an item of weight 0 is never drawn.

    Args:
        weights: ``(n,)`` non-negative integers, the initial weights.
    """

    def __init__(self, weights: np.ndarray) -> None:
        weights = np.asarray(weights, dtype=np.int64)
        size = int(weights.shape[0])
        # Node i (1-based) holds the sum of weights (i - lowbit(i), i]: build all nodes at once from a prefix sum.
        prefix = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(weights, out=prefix[1:])
        node = np.arange(1, size + 1, dtype=np.int64)
        tree = np.zeros(size + 1, dtype=np.int64)
        tree[1:] = prefix[node] - prefix[node - (node & -node)]
        self._tree: list[int] = tree.tolist()
        self._weights: list[int] = weights.tolist()
        self._size = size
        self._top_bit = 1 << (size.bit_length() - 1) if size else 0
        self.total: int = int(prefix[-1])

    def __len__(self) -> int:
        return self._size

    def weight(self, item: int) -> int:
        return self._weights[item]

    def set(self, item: int, weight: int) -> None:
        """Set the weight of ``item``."""
        delta = weight - self._weights[item]
        if not delta:
            return
        self._weights[item] = weight
        self.total += delta
        tree, size = self._tree, self._size
        node = item + 1
        while node <= size:
            tree[node] += delta
            node += node & -node

    def draw(self, uniform: float) -> int:
        """The item whose weight interval contains ``uniform * total``; ``uniform`` in ``[0, 1)``.

        Raises:
            ValueError: every weight is zero.
        """
        if self.total <= 0:
            raise ValueError("cannot draw from a pool whose weights are all zero")
        # min(): for totals above 2**53 the float product can round up to total itself.
        target = min(int(uniform * self.total), self.total - 1)
        tree, size = self._tree, self._size
        position, step = 0, self._top_bit
        # Binary lifting: the largest position whose prefix sum is <= target; the next item holds target.
        while step:
            node = position + step
            if node <= size and tree[node] <= target:
                position = node
                target -= tree[node]
            step >>= 1
        return position
