"""Embedding texts for evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def encode(model, texts: Sequence[str], batch_size: int = 128, show_progress_bar: bool = True) -> torch.Tensor:
    """L2-normalised float32 embeddings [len(texts), D] on the CPU, so dot products are cosines.

    Texts are deduplicated first: WordNet has repeated lemma strings and some repeated definitions,
    and embedding each once saves time on a slow CPU.
    """
    unique_texts = list(dict.fromkeys(texts))
    position = {text: index for index, text in enumerate(unique_texts)}
    was_training = model.training
    model.eval()
    try:
        embeddings = model.encode(
            unique_texts,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
    finally:
        model.train(was_training)
    embeddings = embeddings.detach().float().cpu()
    return embeddings[torch.tensor([position[text] for text in texts], dtype=torch.long)]
