"""Drop-in for sentence-transformers' ``MegaBatchMarginLoss``, its negative mining on the fused kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from embedplug.functional.mega_batch_margin import mega_batch_margin_loss
from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.gradcache import GradCacheMixin, validate_mini_batch_num_tokens

WIETING_2018_CITATION = """
@inproceedings{wieting-gimpel-2018-paranmt,
    title = "{P}ara{NMT}-50{M}: Pushing the Limits of Paraphrastic Sentence Embeddings with Millions of Machine Translations",
    author = "Wieting, John and Gimpel, Kevin",
    editor = "Gurevych, Iryna and Miyao, Yusuke",
    booktitle = "Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics (Volume 1: Long Papers)",
    month = jul,
    year = "2018",
    address = "Melbourne, Australia",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/P18-1042",
    doi = "10.18653/v1/P18-1042",
    pages = "451--462",
}
"""


class MegaBatchMarginLoss(GradCacheMixin, EmbeddingLoss):
    """Each anchor against its own positive and its hardest in-batch negative (another anchor's positive).

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.MegaBatchMarginLoss`` (6.x). sentence-transformers builds the
    anchors x positives similarity matrix ``mini_batch_size`` rows at a time; here the hardest negative of
    every anchor comes from a running row maximum over GEMM tiles (``embedplug::hardest_off_diagonal_similarity``),
    so the loss stage is O(N D) memory at any batch size.

    Args:
        model: the SentenceTransformer being trained.
        positive_margin: cos(anchor, positive) should be at least this.
        negative_margin: cos(anchor, hardest negative) should be at most this.
        use_mini_batched_version: GradCache as in sentence-transformers (embed mini-batches without
            gradients, compute the loss on the whole batch, replay each mini-batch with its cached
            gradient), so the batch is bounded by what one mini-batch needs; False embeds the batch at once.
        mini_batch_size, mini_batch_num_tokens: rows (or a token budget) per embedding forward pass.
        show_progress_bar: tqdm bars over the mini-batches.

    Inputs: (anchor, positive) pairs, no labels.
    """

    embedplug_ops = ("hardest_off_diagonal_similarity",)

    def __init__(
        self,
        model: nn.Module,
        positive_margin: float = 0.8,
        negative_margin: float = 0.3,
        use_mini_batched_version: bool = True,
        mini_batch_size: int = 50,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__(model)
        if use_mini_batched_version:
            from sentence_transformers.base.losses.gradcache import has_static_embedding_input

            if has_static_embedding_input(model):
                raise ValueError(
                    "The mini-batched MegaBatchMarginLoss is not compatible with a SentenceTransformer model based "
                    "on a StaticEmbedding, whose inputs cannot be split into mini-batches along a batch dimension. "
                    "Consider passing use_mini_batched_version=False instead."
                )
        validate_mini_batch_num_tokens(mini_batch_num_tokens)
        self.positive_margin = positive_margin
        self.negative_margin = negative_margin
        self.use_mini_batched_version = use_mini_batched_version
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        # Per instance, as in sentence-transformers: MatryoshkaLoss decorates calculate_loss only when on.
        self.uses_gradient_cache = use_mini_batched_version

    @staticmethod
    def _validate_input(sentence_features: list[dict[str, Tensor]]) -> None:
        if len(sentence_features) != 2:
            raise ValueError(
                f"MegaBatchMarginLoss expects exactly 2 input columns, (anchor, positive), but got "
                f"{len(sentence_features)}. It mines the hardest negative for each anchor from the other "
                "positives in the batch, so it has no use for an explicit negative column. Consider "
                "CachedMultipleNegativesRankingLoss if you want to train with explicit negatives."
            )

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """The loss on the whole batch from per-column lists of mini-batch embeddings ([b, D] each); with
        ``with_backward`` it is back-propagated to ``reps`` and returned detached. Labels are unused."""
        loss = self.compute_loss_from_embeddings([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """``embeddings`` = [anchors [N, D], positives [N, D]] -> scalar loss."""
        return mega_batch_margin_loss(embeddings[0], embeddings[1], self.positive_margin, self.negative_margin)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        if self.use_mini_batched_version:
            return self.forward_mini_batched(sentence_features, labels)
        return self.forward_non_mini_batched(sentence_features, labels)

    def forward_mini_batched(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        """sentence-transformers' GradCache path: mini-batches embedded without a graph, then replayed."""
        sentence_features = list(sentence_features)
        self._validate_input(sentence_features)
        return self.forward_cached(sentence_features, labels)

    def forward_non_mini_batched(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        """The whole batch embedded with its graph in one pass."""
        from sentence_transformers.base.losses.merged_forward import embed_columns

        sentence_features = list(sentence_features)
        self._validate_input(sentence_features)
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "positive_margin": self.positive_margin,
            "negative_margin": self.negative_margin,
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return WIETING_2018_CITATION

