"""Distance names understood by the fused kernels, and recognition of sentence-transformers' distance functions."""

from __future__ import annotations

import functools
from collections.abc import Callable

DISTANCES = ("euclidean", "squared_euclidean", "cosine")

_ALIASES = {
    "euclidean": "euclidean",
    "l2": "euclidean",
    "squared_euclidean": "squared_euclidean",
    "sqeuclidean": "squared_euclidean",
    "cosine": "cosine",
}

# Function names used by sentence-transformers' BatchHardTripletLossDistanceFunction (and ours).
_FUNCTION_NAMES = {
    "euclidean_distance": "euclidean",
    "eucledian_distance": "euclidean",
    "cosine_distance": "cosine",
}
_TRUSTED_MODULES = (
    "sentence_transformers.sentence_transformer.losses.batch_hard_triplet",
    "sentence_transformers.losses.BatchHardTripletLoss",
    "embedplug.losses.distance_functions",
)


def canonical_distance(name: str) -> str:
    """Normalises a distance name; raises ValueError naming the accepted ones."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _ALIASES:
        raise ValueError(f"unknown distance {name!r}; expected one of {', '.join(DISTANCES)}")
    return _ALIASES[key]


def kernel_distance(metric: str | Callable) -> str | None:
    """The kernel distance name for ``metric``, or None when only the reference path can run it.

    Accepts a distance name, sentence-transformers' ``BatchHardTripletLossDistanceFunction``
    functions (``euclidean_distance``, ``eucledian_distance``, ``cosine_distance``) or embedplug's
    copies of them, and ``functools.partial(euclidean_distance, squared=True)``.
    """
    if isinstance(metric, str):
        return canonical_distance(metric)
    squared = False
    if isinstance(metric, functools.partial):
        if metric.args or set(metric.keywords) - {"squared"}:
            return None
        squared = bool(metric.keywords.get("squared", False))
        metric = metric.func
    if getattr(metric, "__module__", None) not in _TRUSTED_MODULES:
        return None
    name = _FUNCTION_NAMES.get(getattr(metric, "__name__", ""))
    if name == "euclidean" and squared:
        return "squared_euclidean"
    if name == "cosine" and squared:
        return None
    return name
