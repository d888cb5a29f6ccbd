"""Embedding queries and corpus for mining, as sentence-transformers does, through the embedding cache."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedplug.mining.cache import EmbeddingCache, model_fingerprint, namespace_key

QUERY, DOCUMENT = "query", "document"


def embed_texts(
    model,
    texts: list[str],
    role: str,
    *,
    prompt_name: str | None,
    prompt: str | None,
    batch_size: int,
    pool: Callable[[], object] | None = None,
    cache: EmbeddingCache | None,
    show_progress_bar: bool,
) -> tuple[np.ndarray, int]:
    """Normalised float32 embeddings [len(texts), D] and how many texts the model had to embed.

    ``role`` picks ``model.encode_query`` or ``model.encode_document`` with sentence-transformers'
    arguments (``normalize_embeddings=True``). With a cache, only texts it lacks are embedded, in
    their order here: a cold run feeds the model exactly what sentence-transformers would.
    ``pool`` returns a multi-process pool (or None); it is called only if something must be embedded.
    """
    encode = model.encode_query if role == QUERY else model.encode_document

    def compute(missing: list[str]) -> np.ndarray:
        return encode(
            missing,
            pool=pool() if pool is not None else None,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
            prompt_name=prompt_name,
            prompt=prompt,
        )

    if cache is None:
        return compute(texts), len(texts)
    namespace = namespace_key(
        model=model_fingerprint(model),
        role=role,
        prompt_name=prompt_name,
        prompt=prompt,
        normalize_embeddings=True,
        precision="float32",
    )
    return cache.get_or_compute(namespace, texts, compute)
