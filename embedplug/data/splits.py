"""Stable train / held-out splits: a keyed hash decides, so splits never change between runs or machines."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

# 5% of WordNet's 117,659 synsets (about 5,900) are held out; never change it, or old numbers stop
# being comparable.
HOLDOUT_FRACTION = 0.05
_SALT = b"embedplug-split-v1"


def stable_unit_hash(key: str) -> float:
    """A number in [0, 1) from ``key`` alone (BLAKE2b, not Python's salted ``hash()``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=_SALT).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_held_out(key: str, fraction: float | None = None) -> bool:
    """Whether the item named ``key`` belongs to the held-out split (default fraction: HOLDOUT_FRACTION)."""
    return stable_unit_hash(key) < (HOLDOUT_FRACTION if fraction is None else fraction)


def split(items: Iterable[T], key: Callable[[T], str], fraction: float | None = None) -> tuple[list[T], list[T]]:
    """``(train, held_out)``, each ordered by hash value (default fraction: HOLDOUT_FRACTION).

    Hash order is a machine-independent shuffle: taking the first N of either list is a stable random
    sample, which is how evaluation and ``train_size`` subsample.
    """
    fraction = HOLDOUT_FRACTION if fraction is None else fraction
    keyed = sorted(((stable_unit_hash(key(item)), index, item) for index, item in enumerate(items)))
    train = [item for value, _, item in keyed if value >= fraction]
    held_out = [item for value, _, item in keyed if value < fraction]
    return train, held_out
