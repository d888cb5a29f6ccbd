"""GradCache (Gao et al. 2021) for the cached in-batch-negative losses.

Three steps, as in sentence-transformers' ``CachedLossMixin``: (1) embed every mini-batch without
gradients, remembering each forward pass's RNG state; (2) compute the loss on the whole batch
from those embeddings and back-propagate it to them, caching their gradients; (3) in a backward
hook on the returned loss, re-embed each mini-batch with gradients under the remembered RNG state
(so dropout draws the same masks) and back-propagate the cached gradients through the model.
With the fused kernel step (2) is O(N D) memory, so the batch is bounded by what the model can
embed mini-batch by mini-batch, not by the N x N similarity matrices.

sentence-transformers' helpers (RNG snapshots, token-budget mini-batches, the DDP-aware backward
hook) are reused, imported lazily because sentence-transformers is an optional dependency.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from torch import Tensor


def check_cacheable_model(model: Any, loss_name: str, uncached_name: str) -> None:
    """sentence-transformers' refusal of StaticEmbedding models, whose inputs cannot be split into mini-batches."""
    from sentence_transformers.base.losses.gradcache import has_static_embedding_input

    if has_static_embedding_input(model):
        raise ValueError(
            f"{loss_name} is not compatible with a SentenceTransformer model based on a StaticEmbedding. "
            f"Consider using {uncached_name} instead."
        )


def validate_mini_batch_num_tokens(mini_batch_num_tokens: int | None) -> None:
    from sentence_transformers.base.losses.gradcache import _validate_mini_batch_num_tokens

    _validate_mini_batch_num_tokens(mini_batch_num_tokens)


class GradCacheMixin:
    """The GradCache forward pass. Subclasses hold ``model``, ``mini_batch_size``,
    ``mini_batch_num_tokens`` and ``show_progress_bar``, implement ``calculate_loss(reps, extra,
    with_backward=...)`` and may override :meth:`embed_guide` to embed a guide model alongside."""

    uses_gradient_cache = True
    # Subclasses that take the option set it per instance.
    sort_mini_batches_by_length = False

    def embed_guide(self, minibatch_features: dict[str, Tensor]) -> Tensor | None:
        """The guide model's [mini-batch, Dg] embeddings of a mini-batch, or None without a guide."""
        return None

    def embed_minibatch(
        self,
        sentence_feature: dict[str, Tensor],
        begin: int,
        end: int,
        with_grad: bool,
        copy_random_state: bool,
        random_state: Any = None,
    ) -> tuple[Tensor, Tensor | None, Any]:
        """Embeds rows ``begin:end``: (student [b, D], guide [b, Dg] or None, RNG snapshot or None).

        The guide runs only in the gradient-free pass: the replay needs the student's embeddings alone.
        """
        from sentence_transformers.base.losses.gradcache import RandContext, _create_minibatch

        grad_context = nullcontext if with_grad else torch.no_grad
        random_state_context = nullcontext() if random_state is None else random_state
        minibatch = _create_minibatch(sentence_feature, begin, end)
        guide_reps = None
        with random_state_context:
            with grad_context():
                random_state = RandContext(*minibatch.values()) if copy_random_state else None
                reps = self.model(minibatch)["sentence_embedding"]
            if not with_grad:
                with torch.no_grad():
                    guide_reps = self.embed_guide(minibatch)
        return reps, guide_reps, random_state

    def embed_minibatch_iter(
        self,
        sentence_feature: dict[str, Tensor],
        with_grad: bool,
        copy_random_state: bool,
        random_states: list[Any] | None = None,
        ranges: list[tuple[int, int]] | None = None,
    ) -> Iterator[tuple[Tensor, Tensor | None, Any]]:
        """Yields :meth:`embed_minibatch` for every mini-batch (sentence-transformers' hook contract)."""
        import tqdm
        from sentence_transformers.base.losses.gradcache import _minibatch_ranges

        if ranges is None:
            ranges = _minibatch_ranges(sentence_feature, self.mini_batch_size, self.mini_batch_num_tokens)
        for index, (begin, end) in enumerate(
            tqdm.tqdm(ranges, desc="Embed mini-batches", disable=not self.show_progress_bar)
        ):
            yield self.embed_minibatch(
                sentence_feature=sentence_feature,
                begin=begin,
                end=end,
                with_grad=with_grad,
                copy_random_state=copy_random_state,
                random_state=None if random_states is None else random_states[index],
            )

    def forward_cached(self, sentence_features: Iterable[dict[str, Tensor]], extra: Any = None) -> Tensor:
        """Steps (1)-(3). ``extra`` is handed to ``calculate_loss`` after the embeddings (the labels);
        a guided subclass gets the guide's embeddings there instead (``extra="guide"``)."""
        from sentence_transformers.base.losses.gradcache import _backward_hook, _minibatch_ranges

        sentence_features = list(sentence_features)
        grad_enabled = torch.is_grad_enabled()
        # Each column embedded in order of length (when asked), so that mini-batches hold texts of
        # similar length and sentence-transformers' trimming of shared trailing padding removes
        # most of it; the loss sees every column back in batch order.
        orders = [
            length_order(features) if self.sort_mini_batches_by_length else None
            for features in sentence_features
        ]
        sentence_features = [
            features if order is None else permute_rows(features, order)
            for features, order in zip(sentence_features, orders)
        ]
        # Boundaries first: modules may edit the features in place, and the replay must reuse them.
        ranges = [
            _minibatch_ranges(features, self.mini_batch_size, self.mini_batch_num_tokens)
            for features in sentence_features
        ]
        reps, guide_reps, random_states = [], [], []
        for features, column_ranges in zip(sentence_features, ranges):
            column_reps, column_guide, column_states = [], [], []
            for reps_mb, guide_mb, state in self.embed_minibatch_iter(
                features, with_grad=False, copy_random_state=grad_enabled, ranges=column_ranges
            ):
                column_reps.append(reps_mb.detach().requires_grad_(grad_enabled))
                column_guide.append(guide_mb)
                column_states.append(state)
            reps.append(column_reps)
            guide_reps.append(column_guide)
            random_states.append(column_states)
        if extra == "guide":
            extra = None if guide_reps[0][0] is None else [
                restore_order(column, order) for column, order in zip(guide_reps, orders)
            ]
        batch_order_reps = [restore_order(column, order) for column, order in zip(reps, orders)]
        if not grad_enabled:
            return self.calculate_loss(batch_order_reps, extra)
        # A reordered column enters the loss as a leaf of its own: wrappers that backpropagate through
        # the loss's inputs more than once (MatryoshkaLoss's cached-loss decorator, once per dimension)
        # then accumulate into it instead of traversing the freed permutation graph a second time.
        batch_order_reps = [
            column if order is None else [column[0].detach().requires_grad_()]
            for column, order in zip(batch_order_reps, orders)
        ]
        loss = self.calculate_loss(batch_order_reps, extra, with_backward=True).detach().requires_grad_()
        cache = [
            [rep.grad for rep in column] if order is None else sorted_mini_batch_grads(leaf[0].grad, order, column)
            for column, leaf, order in zip(reps, batch_order_reps, orders)
        ]
        unused = [str(index) for index, column in enumerate(cache) if any(grad is None for grad in column)]
        if unused:
            raise ValueError(
                f"The loss computation of {type(self).__name__} did not use input column(s) {', '.join(unused)}: "
                "their embeddings received no gradient; remove the unused column(s) from the dataset."
            )
        loss.register_hook(
            partial(
                _backward_hook,
                sentence_features=sentence_features,
                loss_obj=self,
                cache=cache,
                random_states=random_states,
                ranges=ranges,
            )
        )
        return loss


def sorted_mini_batch_grads(grad: Tensor | None, order: Tensor, column: list[Tensor]) -> list[Tensor | None]:
    """The batch-order gradient [N, D] of a reordered column, split back into its mini-batches' rows
    (embedded in ``order``); [None, ...] when the loss did not use the column."""
    if grad is None:
        return [None] * len(column)
    return list(grad[order.to(grad.device)].split([rep.shape[0] for rep in column]))


def length_order(features: dict[str, Any]) -> Tensor | None:
    """Row order by number of attended tokens (stable), or None when the rows cannot be reordered
    as a whole (no 2-D attention mask, flattened inputs, or per-item tensors of another length)."""
    mask = features.get("attention_mask")
    if not isinstance(mask, Tensor) or mask.ndim != 2 or "cu_seq_lens_q" in features:
        return None
    rows = mask.shape[0]
    if any(isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != rows) for value in features.values()):
        return None
    return torch.argsort(mask.sum(dim=1), stable=True)


def permute_rows(features: dict[str, Any], order: Tensor) -> dict[str, Any]:
    """The tokenized column with its rows in ``order`` (non-tensor entries unchanged)."""
    return {key: value[order] if isinstance(value, Tensor) else value for key, value in features.items()}


def restore_order(column: list[Tensor], order: Tensor | None) -> list[Tensor]:
    """Mini-batch embeddings of a column embedded in ``order``, as one tensor in batch order
    (gradients reach the mini-batch tensors); unchanged when the column was not reordered."""
    if order is None:
        return column
    embeddings = torch.cat(column)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return [embeddings[inverse.to(embeddings.device)]]
