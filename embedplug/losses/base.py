"""What every embedplug drop-in loss shares with sentence-transformers' loss contract."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from embedplug._validation import check_column_count, warn_non_finite_rows


class EmbeddingLoss(nn.Module):
    """Base of the drop-in losses: the model is one child, reachable as both ``model`` and
    ``sentence_embedder``. It is registered under ``model_child_name``, the name the
    sentence-transformers loss being replaced uses, so ``named_parameters()`` and ``state_dict()``
    keys are sentence-transformers' own; with ``"model"`` (most losses), ``SentenceTransformerTrainer``
    swaps in its wrapped model."""

    model_child_name = "model"
    _MODEL_ALIASES = frozenset({"model", "sentence_embedder"})

    # The embedplug ops this loss runs (schema names). What `embedplug plugins` and backend_info()
    # report is derived from them: "fused" only when those ops run their kernels.
    embedplug_ops: tuple[str, ...] = ()

    def __init__(self, model: nn.Module | None) -> None:
        super().__init__()
        self.model = model

    def __setattr__(self, name: str, value: Any) -> None:
        # One child under one name: assigning either alias rebinds it.
        if name not in self._MODEL_ALIASES:
            super().__setattr__(name, value)
            return
        child = self.model_child_name
        if isinstance(value, nn.Module) or value is None:
            self.__dict__.pop(child, None)
            self._modules[child] = value
        else:  # not a module (a stand-in in a test): a plain attribute, as nn.Module would keep it
            self._modules.pop(child, None)
            self.__dict__[child] = value

    def _model_child(self) -> nn.Module | None:
        if self.model_child_name in self._modules:
            return self._modules[self.model_child_name]
        return self.__dict__.get(self.model_child_name)

    @property
    def model(self) -> nn.Module | None:
        return self._model_child()

    @property
    def sentence_embedder(self) -> nn.Module | None:
        return self._model_child()

    def backend_info(self, device_type: str = "cpu") -> dict:
        """``{"implementation": "fused"|"reference", "reason": ...}``: what this loss runs on ``device_type``."""
        from embedplug.ops import backend_of

        return backend_of(self.embedplug_ops, device_type)

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
    their sentence-transformers-named method (``batch_hard_triplet_loss`` and so on). The model is
    the child ``sentence_embedder``, as in sentence-transformers.

    With ``gather_across_devices`` (embedplug's; sentence-transformers' batch triplet losses do not
    gather) the embeddings and labels of every rank are gathered, embeddings with gradients, and
    every rank computes the loss of the whole gathered batch: its value equals one process on the
    concatenated batch, and since the all-gather's backward sums the ranks' (equal) gradients onto
    each rank's rows, DDP's averaging gives exactly that process's parameter gradient. Per-rank
    batch sizes may differ. The mining kernels are square, so every rank mines all rows (the
    fused kernels keep memory O(N); the time is the whole batch's on every rank).
    """

    gather_across_devices = False
    model_child_name = "sentence_embedder"
    # The loss contract's declaration (embedplug.hookspecs.LABEL_AWARE): `embedplug train` gives these
    # losses single texts with class labels.
    embedplug_label_aware = True

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings([self.embed(sentence_features[0])], labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """``embeddings[0]`` [N, D], ``labels`` [N] -> scalar loss."""
        check_column_count(embeddings, 1, 1, f"{type(self).__name__}.compute_loss_from_embeddings")
        if self.gather_across_devices:
            from embedplug.distributed import gather_labelled_batch, is_distributed

            if is_distributed():
                gathered_embeddings, gathered_labels = gather_labelled_batch(embeddings[0], labels, type(self).__name__)
                loss = self.labelled_batch_loss(gathered_labels, gathered_embeddings)
                warn_non_finite_rows(self, loss, [gathered_embeddings])
                return loss
        loss = self.labelled_batch_loss(labels, embeddings[0])
        warn_non_finite_rows(self, loss, embeddings)
        return loss

    def labelled_batch_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        """The loss of one batch: integer class ``labels`` [N] and ``embeddings`` [N, D] -> a scalar."""
        raise NotImplementedError

    def backend_info(self, device_type: str = "cpu") -> dict:
        """As :meth:`EmbeddingLoss.backend_info`; a custom distance callable runs on the reference."""
        from embedplug.distances import kernel_distance

        if kernel_distance(getattr(self, "distance_metric", "euclidean")) is None:
            return {"implementation": "reference", "reason": "pure-torch reference: a custom distance callable"}
        return super().backend_info(device_type)

    def distance_metric_name(self) -> str:
        """How sentence-transformers' ``get_config_dict`` names ``self.distance_metric``."""
        return getattr(self.distance_metric, "__name__", str(self.distance_metric))

    @property
    def citation(self) -> str:
        return HERMANS_2017_CITATION
