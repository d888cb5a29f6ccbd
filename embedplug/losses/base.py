"""What every embedplug drop-in loss shares with sentence-transformers' loss contract."""

from __future__ import annotations

from typing import Any

from torch import nn


class EmbeddingLoss(nn.Module):
    """Base of the drop-in losses: the model is the child ``model`` (so ``SentenceTransformerTrainer``
    can swap in its wrapped model), reachable too as ``sentence_embedder``, the attribute name some
    sentence-transformers losses use."""

    def __init__(self, model: nn.Module | None) -> None:
        super().__init__()
        self.model = model

    def __setattr__(self, name: str, value: Any) -> None:
        # One child under one name: assigning the alias rebinds ``model``.
        super().__setattr__("model" if name == "sentence_embedder" else name, value)

    @property
    def sentence_embedder(self) -> nn.Module | None:
        return self.model

    def embed(self, sentence_features: dict) -> Any:
        """Runs the model on one tokenised column and returns its ``sentence_embedding`` [N, D]."""
        return self.model(sentence_features)["sentence_embedding"]
