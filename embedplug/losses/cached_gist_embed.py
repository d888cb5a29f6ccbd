"""Drop-in for sentence-transformers' ``CachedGISTEmbedLoss``: GradCache around the fused GIST loss."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from embedplug._validation import check_positive_int, check_positive_number
from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.gist_embed import GuideMixin
from embedplug.losses.gradcache import GradCacheMixin, check_cacheable_model, validate_mini_batch_num_tokens


class CachedGISTEmbedLoss(GradCacheMixin, GuideMixin, EmbeddingLoss):
    """GISTEmbedLoss with GradCache: very large in-batch negatives at mini-batch memory.

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.CachedGISTEmbedLoss`` of the installed release (6.2 or 6.3, whose
    GIST rules differ as :class:`~embedplug.losses.GISTEmbedLoss` says): every mini-batch is embedded
    without gradients (the guide alongside it), the loss and its gradients w.r.t. the embeddings
    are computed on the whole batch, then each mini-batch is re-embedded with gradients under the
    same RNG state and the cached gradients are back-propagated. sentence-transformers chunks the
    loss stage to bound its N x N memory; the fused kernel needs no chunks (O(N D) memory).
    Any number of negative columns; ``guide=None`` filters self-guided. ``calculate_loss`` is an
    ordinary method, so ``MatryoshkaLoss`` can patch it on the instance.

    Args:
        model, guide, temperature, margin_strategy, margin, contrast_anchors, contrast_positives,
        gather_across_devices: as in :class:`~embedplug.losses.GISTEmbedLoss`.
        mini_batch_size: rows per embedding forward pass (memory, not the loss, depends on it).
        mini_batch_num_tokens: token budget per mini-batch instead of a fixed row count.
        show_progress_bar: tqdm bars over the mini-batches.
        sort_mini_batches_by_length: embed each column's texts in order of length (embedplug only;
            the loss does not depend on the order), so that mini-batches hold similar lengths and
            carry little padding: fewer tokens per step on a CPU. Off by default, as in
            sentence-transformers, whose mini-batches (and so dropout draws) follow batch order.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module | None,
        temperature: float = 0.01,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
        margin_strategy: str = "absolute",
        margin: float = 0.0,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        gather_across_devices: bool = False,
        sort_mini_batches_by_length: bool = False,
    ) -> None:
        super().__init__(model)
        check_cacheable_model(model, "CachedGISTEmbedLoss", "GISTEmbedLoss")
        self._setup_guide(model, guide, margin_strategy, margin)
        validate_mini_batch_num_tokens(mini_batch_num_tokens)
        check_positive_number(temperature, "temperature", "CachedGISTEmbedLoss")
        check_positive_int(mini_batch_size, "mini_batch_size", "CachedGISTEmbedLoss")
        self.temperature = temperature
        self.similarity_fct = nn.CosineSimilarity(dim=-1)
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self.sort_mini_batches_by_length = sort_mini_batches_by_length
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.gather_across_devices = gather_across_devices
        # sentence-transformers' parts, kept for code that reads them; the fused kernel computes the
        # same cosine softmax cross-entropy and refuses replacements it cannot honour (see _gist_from_columns).
        self.cross_entropy_loss = nn.CrossEntropyLoss()

    def embed_guide(self, minibatch_features: dict[str, Tensor]) -> Tensor | None:
        if self.guide is None:
            return None
        return self.guide(self.guide_features(minibatch_features))["sentence_embedding"]

    def calculate_loss(
        self, reps: list[list[Tensor]], reps_guided: list[list[Tensor]] | None = None, with_backward: bool = False
    ) -> Tensor:
        """Loss on the whole batch from per-column lists of mini-batch embeddings ([b, D] each);
        ``reps_guided`` is the guide's, None when self-guided. With ``with_backward`` the loss is
        back-propagated to ``reps`` and returned detached."""
        if reps_guided is not None and len(reps) != len(reps_guided):
            raise ValueError("reps and reps_guided must have the same length")
        if len(reps) < 2:
            raise ValueError(f"Expected at least 2 columns (anchor, positive), got {len(reps)}")
        embeddings = [torch.cat(column) for column in reps]
        guide_embeddings = None if reps_guided is None else [torch.cat(column) for column in reps_guided]
        loss = self._gist_from_columns(embeddings, guide_embeddings)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def calculate_loss_and_cache_gradients(
        self, reps: list[list[Tensor]], reps_guided: list[list[Tensor]] | None
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """The loss (detached, requiring grad) and the gradients w.r.t. every mini-batch embedding."""
        loss = self.calculate_loss(reps, reps_guided, with_backward=True).detach().requires_grad_()
        return loss, [[rep.grad for rep in column] for column in reps]

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        return self.forward_cached(sentence_features, "guide")

    def get_config_dict(self) -> dict[str, Any]:
        config = {
            "guide": self.guide,
            "temperature": self.temperature,
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
            "margin_strategy": self.margin_strategy,
            "margin": self.margin,
            "contrast_anchors": self.contrast_anchors,
            "contrast_positives": self.contrast_positives,
            "gather_across_devices": self.gather_across_devices,
        }
        # Only when on, so that the default config (and model card) is sentence-transformers' own.
        if self.sort_mini_batches_by_length:
            config["sort_mini_batches_by_length"] = True
        return config
