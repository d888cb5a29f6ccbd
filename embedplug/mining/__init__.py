"""Dataset-scale hard-negative mining: exact, streamed, cached.

* :func:`topk_hard_negatives` / :func:`search_hard_negatives`: per query, the k best corpus rows after
  sentence-transformers' false-negative filters, on embedding tensors (CPU or CUDA).
* :func:`mine_hard_negatives`: a drop-in for ``sentence_transformers.util.mine_hard_negatives``
  (needs ``sentence-transformers`` and ``datasets``).
* :class:`EmbeddingCache`: embeddings on disk, keyed by model weights and text.

See docs/mining.md.
"""

from __future__ import annotations

from embedplug.mining.cache import EmbeddingCache, model_fingerprint
from embedplug.mining.dedup import unique_texts
from embedplug.mining.topk import REMOVAL_NAMES, HardNegativeTopK, search_hard_negatives, topk_hard_negatives

__all__ = [
    "REMOVAL_NAMES",
    "EmbeddingCache",
    "HardNegativeTopK",
    "mine",
    "mine_hard_negatives",
    "model_fingerprint",
    "search_hard_negatives",
    "topk_hard_negatives",
    "unique_texts",
]


def __getattr__(name: str):
    # The drop-in imports datasets and tqdm; load it only when asked for.
    if name in ("mine_hard_negatives", "mine"):
        from embedplug.mining import hard_negatives

        return getattr(hard_negatives, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
