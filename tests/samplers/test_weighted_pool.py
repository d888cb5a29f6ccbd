"""WeightedPool: exact weighted draws and updates against a cumulative-sum reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.samplers._weighted_pool import WeightedPool


def reference_draw(weights, uniform):
    target = min(int(uniform * sum(weights)), sum(weights) - 1)
    return int(np.searchsorted(np.cumsum(weights), target, side="right"))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    weights=st.lists(st.integers(0, 50), min_size=1, max_size=40).filter(lambda w: sum(w) > 0),
    updates=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 50)), max_size=30),
    uniforms=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=20),
)
def test_draws_match_the_cumulative_sum_reference_after_updates(weights, updates, uniforms):
    pool = WeightedPool(np.asarray(weights))
    current = list(weights)
    for item, weight in updates:
        item %= len(current)
        pool.set(item, weight)
        current[item] = weight
    assert pool.total == sum(current)
    if pool.total == 0:
        with pytest.raises(ValueError, match="all zero"):
            pool.draw(0.5)
        return
    for uniform in uniforms:
        drawn = pool.draw(uniform)
        assert drawn == reference_draw(current, uniform)
        assert current[drawn] > 0  # a zero-weight item is never drawn


def test_every_item_is_reachable_in_proportion_to_its_weight():
    weights = [3, 0, 1, 4]
    pool = WeightedPool(np.asarray(weights))
    hits = [pool.draw((t + 0.5) / 8) for t in range(8)]
    assert hits == [0, 0, 0, 2, 3, 3, 3, 3]
