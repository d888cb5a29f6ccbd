"""What every embedplug drop-in loss shares with sentence-transformers' loss contract."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn


class EmbeddingLoss(nn.Module):
    """Base of the drop-in losses: the model is the child ``model`` (so ``SentenceTransformerTrainer``
    can swap in its wrapped model), reachable too as ``sentence_embedder``, the attribute name some
    sentence-transformers losses use."""

    # What `embedplug plugins` reports (embedplug.implementations); a loss on plain torch overrides it.
    embedplug_implementation = "embedplug fused kernel"

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


# The reference sentence-transformers cites for its whole batch triplet family.
HERMANS_2017_CITATION = """
@misc{hermans2017defense,
    title={In Defense of the Triplet Loss for Person Re-Identification},
    author={Alexander Hermans and Lucas Beyer and Bastian Leibe},
    year={2017},
    eprint={1703.07737},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}
"""



class LabelledBatchLoss(EmbeddingLoss):
    """Shape of sentence-transformers' batch triplet losses: one text column with class labels.

    Subclasses implement ``labelled_batch_loss(labels [N], embeddings [N, D]) -> scalar`` by calling
    their sentence-transformers-named method (``batch_hard_triplet_loss`` and so on).
    """

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings([self.embed(sentence_features[0])], labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """``embeddings[0]`` [N, D], ``labels`` [N] -> scalar loss."""
        return self.labelled_batch_loss(labels, embeddings[0])

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        raise NotImplementedError

    def distance_metric_name(self) -> str:
        """How sentence-transformers' ``get_config_dict`` names ``self.distance_metric``."""
        return getattr(self.distance_metric, "__name__", str(self.distance_metric))

    @property
    def citation(self) -> str:
        return HERMANS_2017_CITATION
