"""Drop-in for sentence-transformers' ``CachedMultipleNegativesRankingLoss``: GradCache around the fused MNRL."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from embedplug._validation import check_positive_int
from embedplug.losses.base import EmbeddingLoss
from embedplug.losses.gradcache import GradCacheMixin, check_cacheable_model, validate_mini_batch_num_tokens
from embedplug.losses.multiple_negatives_ranking import MultipleNegativesRankingLoss, MultipleNegativesRankingMixin

# The hyper-parameters that live on the wrapped ``loss`` (sentence-transformers' ``_delegated_to_wrapped_loss``).
_DELEGATED_TO_WRAPPED_LOSS = (
    "scale",
    "similarity_fct",
    "gather_across_devices",
    "directions",
    "partition_mode",
    "hardness_mode",
    "hardness_strength",
)


def _wrapped_loss_option(name: str) -> property:
    return property(lambda self: getattr(self.loss, name), doc=f"``loss.{name}``, the wrapped loss's option.")


class CachedMultipleNegativesRankingLoss(GradCacheMixin, MultipleNegativesRankingMixin, EmbeddingLoss):
    """MultipleNegativesRankingLoss with GradCache (Gao et al. 2021).

    Same constructor, attributes, config, forward and numbers as
    ``sentence_transformers.losses.CachedMultipleNegativesRankingLoss`` (6.2 and 6.3). The loss stage runs
    on the whole batch at once (the fused kernel is O(N D) memory, so sentence-transformers'
    chunking of the score matrix is unnecessary); options outside the kernel run on the reference,
    as :meth:`backend_info` reports. ``calculate_loss`` can be patched by ``MatryoshkaLoss``.
    As in sentence-transformers, the hyper-parameters live on the child ``loss`` (a
    :class:`~embedplug.losses.MultipleNegativesRankingLoss` on the same model, which validates
    them): reading or assigning ``scale``, ``directions`` ... reads or assigns ``loss.scale`` ...

    Args:
        model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
        hardness_mode, hardness_strength: as in :class:`~embedplug.losses.MultipleNegativesRankingLoss`.
        mini_batch_size: rows per embedding forward pass.
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
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        gather_across_devices: bool = False,
        directions: tuple[str, ...] = ("query_to_doc",),
        partition_mode: str = "joint",
        show_progress_bar: bool = False,
        hardness_mode: str | None = None,
        hardness_strength: float = 0.0,
        sort_mini_batches_by_length: bool = False,
    ) -> None:
        super().__init__(model)
        check_cacheable_model(model, "CachedMultipleNegativesRankingLoss", "MultipleNegativesRankingLoss")
        validate_mini_batch_num_tokens(mini_batch_num_tokens)
        check_positive_int(mini_batch_size, "mini_batch_size", "CachedMultipleNegativesRankingLoss")
        self.loss = MultipleNegativesRankingLoss(
            model,
            scale=scale,
            similarity_fct=similarity_fct,
            gather_across_devices=gather_across_devices,
            directions=directions,
            partition_mode=partition_mode,
            hardness_mode=hardness_mode,
            hardness_strength=hardness_strength,
        )
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar
        self.sort_mini_batches_by_length = sort_mini_batches_by_length

    scale = _wrapped_loss_option("scale")
    similarity_fct = _wrapped_loss_option("similarity_fct")
    gather_across_devices = _wrapped_loss_option("gather_across_devices")
    directions = _wrapped_loss_option("directions")
    partition_mode = _wrapped_loss_option("partition_mode")
    hardness_mode = _wrapped_loss_option("hardness_mode")
    hardness_strength = _wrapped_loss_option("hardness_strength")

    def __setattr__(self, name: str, value: Any) -> None:
        # Without this, ``loss.scale = 5.0`` would hit the setterless property (sentence-transformers' rule).
        if name in _DELEGATED_TO_WRAPPED_LOSS and isinstance(self.__dict__.get("_modules", {}).get("loss"), nn.Module):
            setattr(self.loss, name, value)
        else:
            super().__setattr__(name, value)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """Loss on the whole batch from per-column lists of mini-batch embeddings ([b, D] each);
        with ``with_backward`` it is back-propagated to ``reps`` and returned detached."""
        loss = self.compute_loss_from_embeddings([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        return self.forward_cached(sentence_features, labels)

    def get_config_dict(self) -> dict:
        # sentence-transformers' key order, which model cards print.
        config = super().get_config_dict()
        ordered = {
            "scale": config.pop("scale"),
            "similarity_fct": config.pop("similarity_fct"),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
            **config,
        }
        # Only when on, so that the default config (and model card) is sentence-transformers' own.
        if self.sort_mini_batches_by_length:
            ordered["sort_mini_batches_by_length"] = True
        return ordered

    @property
    def citation(self) -> str:
        return """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""
