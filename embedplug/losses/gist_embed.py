"""Drop-in for sentence-transformers' ``GISTEmbedLoss``, on the fused masked in-batch softmax."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from embedplug._validation import (
    check_column_count,
    check_finite_number,
    check_positive_number,
    warn_non_finite_rows,
)
from embedplug.distributed import gather_columns, is_distributed, require_equal_sizes
from embedplug.functional.in_batch_negatives import MARGIN_STRATEGIES, check_columns, gist_embed_loss
from embedplug.losses.base import EmbeddingLoss
from embedplug.ops.masked_infonce import fused_backend_info
from embedplug.st_version import loss_report

GIST_CITATION = """
@misc{solatorio2024gistembed,
    title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning},
    author={Aivin V. Solatorio},
    year={2024},
    eprint={2402.16829},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


class GuideMixin:
    """The guide-model plumbing GISTEmbedLoss and CachedGISTEmbedLoss share: sentence-transformers'
    tokenizer checks, re-tokenisation for a guide with another vocabulary or a shorter max length,
    and the options of the false-negative filter."""

    embedplug_ops = ("masked_infonce_mean",)

    def _setup_guide(
        self, model: nn.Module, guide: nn.Module | None, margin_strategy: str, margin: float
    ) -> None:
        from transformers import PreTrainedTokenizerBase

        self.guide = guide
        self.must_retokenize = False
        if guide is not None:
            if not hasattr(model, "tokenizer") or not hasattr(guide, "tokenizer"):
                raise ValueError("Both the training model and the guiding model must have a tokenizer attribute.")
            if not isinstance(model.tokenizer, PreTrainedTokenizerBase) or not isinstance(
                guide.tokenizer, PreTrainedTokenizerBase
            ):
                raise ValueError(
                    "Both the training model and the guiding model must use a PreTrainedTokenizer from transformers."
                )
            self.must_retokenize = (
                model.tokenizer.get_vocab() != guide.tokenizer.get_vocab()
                or guide.max_seq_length < model.max_seq_length
            )
            if self.must_retokenize:
                self.tokenizer = model.tokenizer
        if margin_strategy not in MARGIN_STRATEGIES:
            raise ValueError("margin_strategy must be 'absolute' or 'relative'.")
        check_finite_number(margin, "margin", type(self).__name__)
        self.margin_strategy = margin_strategy
        self.margin = margin

    def guide_features(self, sentence_feature: dict[str, Tensor]) -> dict[str, Tensor]:
        """The guide's input for one tokenised column: a shallow copy (the guide writes its outputs
        into the dict it gets) or, when the vocabularies differ, the decoded texts re-tokenised."""
        if not self.must_retokenize:
            return dict(sentence_feature)
        from sentence_transformers.util import batch_to_device

        input_ids = sentence_feature["input_ids"]
        if "cu_seq_lens_q" in sentence_feature:
            flat_input_ids = input_ids[0].tolist()
            bounds = sentence_feature["cu_seq_lens_q"].tolist()
            input_ids = [flat_input_ids[start:end] for start, end in zip(bounds[:-1], bounds[1:])]
        decoded = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return batch_to_device(self.guide.preprocess(decoded), self.guide.device)

    def sim_matrix(self, embed1: Tensor, embed2: Tensor) -> Tensor:
        """sentence-transformers' helper: ``similarity_fct`` of every row pair, [N, D] x [M, D] -> [N, M]."""
        return self.similarity_fct(embed1.unsqueeze(1), embed2.unsqueeze(0))

    def _check_default_parts(self) -> None:
        """The fused loss is cosine similarity and a mean cross-entropy: a replaced ``similarity_fct`` or
        ``cross_entropy_loss`` (which sentence-transformers would use) must not be silently ignored."""
        similarity = self.similarity_fct
        if type(similarity) is not nn.CosineSimilarity or similarity.dim != -1 or similarity.eps != 1e-8:
            raise ValueError(
                f"{type(self).__name__}.similarity_fct must stay nn.CosineSimilarity(dim=-1): the fused loss "
                f"computes cosine similarities, got {similarity!r}"
            )
        criterion = getattr(self, "cross_entropy_loss", None)
        if criterion is not None and not (
            type(criterion) is nn.CrossEntropyLoss
            and criterion.weight is None
            and criterion.reduction == "mean"
            and criterion.label_smoothing == 0.0
        ):
            raise ValueError(
                f"{type(self).__name__}.cross_entropy_loss must stay nn.CrossEntropyLoss() (no weight, label "
                f"smoothing or other reduction): the fused loss computes that one, got {criterion!r}"
            )

    def _gist_from_columns(self, embeddings: Sequence[Tensor], guide_embeddings: Sequence[Tensor] | None) -> Tensor:
        """Scalar loss from the student's [B, D] columns (anchor, positive, negatives...) and the
        guide's (or None: self-guided), gathering the candidates across devices when asked."""
        self._check_default_parts()
        check_column_count(embeddings, 2, None, f"{type(self).__name__}: embeddings")
        if guide_embeddings is not None:
            check_column_count(guide_embeddings, len(embeddings), len(embeddings), f"{type(self).__name__}: guide_embeddings")
        anchor, positive, *negatives = embeddings
        guide_anchor = guide_positive = None
        guide_negatives: list[Tensor] = []
        if guide_embeddings is not None:
            guide_anchor, guide_positive, *guide_negatives = guide_embeddings
        offset = 0
        if self.gather_across_devices and is_distributed():
            positive, negatives, guide_positive, guide_negatives, offset = self._gather_candidates(
                anchor, positive, negatives, guide_anchor, guide_positive, guide_negatives
            )
        loss = gist_embed_loss(
            anchor,
            positive,
            negatives,
            guide_anchor=guide_anchor,
            guide_positive=guide_positive,
            guide_negatives=guide_negatives,
            temperature=self.temperature,
            margin_strategy=self.margin_strategy,
            margin=self.margin,
            contrast_anchors=self.contrast_anchors,
            contrast_positives=self.contrast_positives,
            offset=offset,
        )
        warn_non_finite_rows(self, loss, embeddings)
        return loss

    def _gather_candidates(self, anchor, positive, negatives, guide_anchor, guide_positive, guide_negatives):
        """sentence-transformers' gathered GIST: the candidates (student's and guide's positives and
        negatives) gathered over the ranks, column by column; the anchors stay local, so the
        anchor-anchor block holds only this rank's anchors (one process on the concatenated batch
        would contrast all anchors: the one way the gathered loss differs from it). Returns the
        gathered columns and this rank's offset in them; the per-rank batch sizes must be equal."""
        caller = type(self).__name__
        student = [positive, *negatives]
        guide = [] if guide_positive is None else [guide_positive, *guide_negatives]
        gathered, layout = gather_columns(
            student + guide, caller, validate=lambda: check_columns(caller, anchor, student)
        )
        require_equal_sizes(layout, caller)
        gathered_guide = gathered[len(student):]
        return (
            gathered[0],
            gathered[1 : len(student)],
            gathered_guide[0] if gathered_guide else None,
            gathered_guide[1:],
            layout.offset,
        )

    def backend_info(self, device_type: str = "cpu") -> dict:
        """Which implementation this loss runs on ``device_type``: every option combination runs on
        the fused ``masked_infonce`` kernel when the extension has one for the device; and which
        sentence-transformers release's GIST rules it follows (the installed one's)."""
        return {**fused_backend_info(device_type), **loss_report()}

    @property
    def citation(self) -> str:
        return GIST_CITATION


class GISTEmbedLoss(GuideMixin, EmbeddingLoss):
    """GISTEmbed (Solatorio 2024): in-batch negatives with false negatives filtered by a guide model.

    Same constructor, attributes, config, citation, forward and numbers as
    ``sentence_transformers.losses.GISTEmbedLoss`` (6.x), computed by the fused masked in-batch
    softmax: every similarity block (anchor-positive, anchor-anchor, positive-positive,
    anchor-negative, and the guide's) is produced tile by tile and folded into an online
    log-sum-exp, so memory is O(N D) instead of sentence-transformers' O(N^2 D). The numbers are
    the installed release's (:mod:`embedplug.st_version`): from 6.3 each anchor's and positive's
    similarity to itself is always out of the softmax, before only when the guide's rule drops it.

    Beyond sentence-transformers: ``guide=None`` filters with the model's own detached
    similarities (self-guided), with no second model and no second forward pass.

    Args:
        model: the SentenceTransformer being trained.
        guide: the SentenceTransformer that selects the in-batch negatives (run under no_grad), or None.
        temperature: logits are cosine similarity / temperature.
        margin_strategy: "absolute" drops candidates whose guide similarity exceeds
            ``positive_sim - margin``; "relative" those above ``positive_sim - |positive_sim| * margin``.
        margin: the filter's margin.
        contrast_anchors: add anchor-anchor pairs to the softmax.
        contrast_positives: add positive-positive pairs to the softmax.
        gather_across_devices: gather candidates from every rank (with gradients) before the loss,
            as sentence-transformers does: positives and negatives (student's and guide's) of every
            rank, anchors local, so the anchor-anchor block only contrasts this rank's anchors (the
            single process on the concatenated batch would contrast all of them; the rest is
            equal). Each rank returns the mean over its own anchors: with equal per-rank batch
            sizes (required, else a ValueError naming them) DDP's gradient averaging gives the
            gradient of the mean of the ranks' losses.

    Inputs: (anchor, positive) pairs or (anchor, positive, negative) triplets, no labels.
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module | None,
        temperature: float = 0.01,
        margin_strategy: str = "absolute",
        margin: float = 0.0,
        contrast_anchors: bool = True,
        contrast_positives: bool = True,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model)
        self._setup_guide(model, guide, margin_strategy, margin)
        if self.must_retokenize:
            from sentence_transformers.sentence_transformer.modules import StaticEmbedding

            if isinstance(self.model[0], StaticEmbedding):
                raise ValueError(
                    "If we must retokenize because the guide model has a different tokenizer, "
                    "then the Sentence Transformer model must not be based on a StaticEmbedding."
                )
        check_positive_number(temperature, "temperature", "GISTEmbedLoss")
        self.temperature = temperature
        self.similarity_fct = nn.CosineSimilarity(dim=-1)
        self.contrast_anchors = contrast_anchors
        self.contrast_positives = contrast_positives
        self.gather_across_devices = gather_across_devices
        # sentence-transformers' parts, kept for code that reads them; the fused kernel computes the
        # same cosine softmax cross-entropy and refuses replacements it cannot honour (see _gist_from_columns).
        self.cross_entropy_loss = nn.CrossEntropyLoss()

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        sentence_features = list(sentence_features)
        if len(sentence_features) not in (2, 3):
            raise ValueError(f"Expected 2 or 3 embeddings, got {len(sentence_features)}")
        # The guide's inputs are taken before the model runs: it writes into the dicts it is given.
        guide_features = [self.guide_features(features) for features in sentence_features] if self.guide is not None else None
        embeddings = embed_columns(self.model, sentence_features)
        guide_embeddings = None
        if self.guide is not None:
            with torch.no_grad():
                guide_embeddings = embed_columns(self.guide, guide_features)
        return self._gist_from_columns(embeddings, guide_embeddings)

    def compute_loss_from_embeddings(
        self, embeddings: list[Tensor], labels: Tensor | None = None, guide_embeddings: list[Tensor] | None = None
    ) -> Tensor:
        """Loss from precomputed columns: ``embeddings`` and ``guide_embeddings`` are lists of [B, D]
        (anchor, positive, negatives...); without ``guide_embeddings`` the filter is self-guided."""
        return self._gist_from_columns(embeddings, guide_embeddings)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "guide": self.guide,
            "temperature": self.temperature,
            "margin_strategy": self.margin_strategy,
            "margin": self.margin,
            "contrast_anchors": self.contrast_anchors,
            "contrast_positives": self.contrast_positives,
            "gather_across_devices": self.gather_across_devices,
        }
