"""``mine_hard_negatives``: a drop-in for sentence-transformers' function, exact and streamed.

Same arguments, defaults, checks, messages and output as ``sentence_transformers.util.mine_hard_negatives``
of the installed version (6.2 or 6.3, see :mod:`embedplug.mining.compat`). What differs is how:

* the top-k search is exact and streamed (:func:`embedplug.mining.topk.run_hard_negative_topk`), so
  memory is O(queries x candidates kept + one tile), never a ``faiss_batch_size x len(corpus)`` score
  matrix, and ``use_faiss`` is accepted but not needed (FAISS' flat index is exact too, but on GPU it
  scores in float16 and caps retrieval at 2048 rows; there is no cap here);
* embeddings go through an on-disk cache keyed by the model's weights and the text
  (:mod:`embedplug.mining.cache`), so a re-run embeds nothing, and ``cache_folder`` names its root;
* ties in score are broken by the lower corpus index (sentence-transformers leaves them to torch.topk);
* the per-filter counts in the summary count each candidate once (6.2's ``min_score`` line also
  counted candidates that earlier rules had removed).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, Literal

import numpy as np
import torch

from embedplug.mining.cache import EmbeddingCache
from embedplug.mining.compat import STBehaviour, behaviour_for
from embedplug.mining.embed import DOCUMENT, QUERY, embed_texts
from embedplug.mining.output import FORMATS, MinedPairs, format_output
from embedplug.mining.shards import Shards
from embedplug.mining.summary import MiningReport
from embedplug.mining.topk import run_hard_negative_topk
from embedplug.reference.hard_negative_topk import (
    REMOVAL_NAMES,
    CandidateFilters,
    make_rules,
    select_candidates,
)

logger = logging.getLogger(__name__)

# Similarity functions that are a GEMM of (possibly normalised) embeddings: the fused path.
_GEMM_SIMILARITIES = ("cosine", "dot")


@dataclasses.dataclass
class MiningResult:
    """The mined dataset and what the summary reports about it."""

    dataset: Any  # datasets.Dataset
    report: MiningReport


def mine_hard_negatives(
    dataset,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder=None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: list[str] | bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    as_triplets: bool | None = None,
    margin: float | None = None,
    *,
    embedding_cache: bool = True,
    st_version: str | None = None,
):
    """Add hard negatives to (anchor, positive) pairs: ``sentence_transformers.util.mine_hard_negatives``, exact.

    Every argument means what it means in sentence-transformers (see its docstring); the dataset
    returned is the same for ``sampling_strategy="top"`` and drawn from the same distribution (with
    Python's ``random``, as there) for ``"random"``. Differences, all in how it is computed:

    * ``use_faiss``: accepted, not needed. The search is exact and streamed over corpus tiles, in
      memory O(queries x (range_max + positives) + one tile); FAISS is never imported.
    * ``faiss_batch_size``: queries per search call, as there (it no longer sizes a score matrix).
    * ``cache_folder``: root of embedplug's embedding cache (default ``~/.cache/embedplug/embeddings``,
      see :mod:`embedplug.mining.cache`), keyed by a hash of the model's weights and each text, so a
      re-run, or a run on a grown dataset, embeds only texts it has not seen. Not the ``.npy`` files
      sentence-transformers writes there.
    * Score ties are broken by the lower corpus index.
    * Progress bars show only when ``verbose`` (sentence-transformers always shows its encode bars).

    Extra keyword-only arguments:
        embedding_cache: False embeds everything afresh and writes nothing.
        st_version: mirror this sentence-transformers version's behaviour ("6.2" or "6.3"; default: the
            installed one).

    Returns:
        datasets.Dataset in the chosen ``output_format`` (see sentence-transformers).
    """
    return mine(**locals()).dataset


def mine(
    dataset,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder=None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: list[str] | bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    as_triplets: bool | None = None,
    margin: float | None = None,
    *,
    embedding_cache: bool = True,
    st_version: str | None = None,
    progress: bool | None = None,
    shards: Shards | None = None,
) -> MiningResult:
    """:func:`mine_hard_negatives` returning a :class:`MiningResult` (dataset and report).

    ``progress`` shows or hides the progress bars apart from ``verbose`` (default: as ``verbose``).
    ``shards`` (from :meth:`Shards.from_process_group`; every rank calls with the same arguments):
    each rank embeds its share of the corpus and of the queries and searches for its share of the
    queries; the parts are gathered, so every rank returns the whole dataset. Draws for ``"random"``
    come from each rank's ``random`` module: seed it alike on every rank.
    """
    behaviour = behaviour_for(st_version)
    progress = verbose if progress is None else progress
    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")

    columns = dataset.column_names
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive_column_name = columns[1]

    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning(
            "The `as_triplets` parameter is deprecated. Use the `output_format` parameter instead. "
            f"Setting `output_format` to `{output_format}`."
        )
    if include_positives:
        if (
            range_min != 0
            or range_max is not None
            or max_score is not None
            or min_score is not None
            or absolute_margin is not None
            or relative_margin is not None
            or margin is not None
            or sampling_strategy != "top"
        ):
            logger.warning(
                "When using `include_positives=True`, updating `range_min`, `range_max`, `max_score`, `min_score`, "
                "`absolute_margin`, `relative_margin`, or `sampling_strategy` from the default values may still "
                "discard the positive values."
            )
        if output_format != "n-tuple":
            logger.warning(
                'When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to ensure that '
                "the ranking order is preserved."
            )
            output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning(
            '`output_format="n-tuple-scores"` is deprecated. Use `output_format="n-tuple"` with '
            "`output_scores=True` instead for equivalent output formats."
        )
        output_format, output_scores = "n-tuple", True
    if output_format not in FORMATS:
        raise ValueError(
            f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', 'labeled-pair', or "
            "'labeled-list'."
        )
    if margin is not None:
        absolute_margin = margin
        logger.warning(
            "The `margin` parameter is deprecated. Use the `absolute_margin` and/or `relative_margin` parameter "
            f"instead. Setting `absolute_margin` to `{absolute_margin}`."
        )

    positives_per_query = _rows_per_anchor(dataset, anchor_column_name, positive_column_name)
    max_positives = max(positives_per_query)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_max is None:
        if (
            absolute_margin is not None
            or relative_margin is not None
            or max_score is not None
            or (cross_encoder is not None and min_score is not None)
        ):
            range_max = range_min + (num_negatives * 10) + max_positives
        else:
            range_max = range_min + num_negatives + max_positives
        # No FAISS-on-GPU cap: the streamed search retrieves any number of rows.
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(
            f"range_min must be smaller than range_max, got range_min={range_min} and range_max={range_max}."
        )
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates remain after "
            f"skipping the first range_min={range_min} of range_max={range_max}. Consider decreasing num_negatives "
            "or range_min, or increasing range_max."
        )

    texts = _MiningTexts.from_dataset(dataset, anchor_column_name, positive_column_name, corpus, include_positives)
    n_queries = len(texts.queries)
    if n_queries != len(texts.row_queries) and verbose:
        print(f"Found {n_queries} unique queries out of {len(texts.row_queries)} total queries.")
    if max_positives > 1 and verbose:
        print(f"Found an average of {np.mean(positives_per_query):.3f} positives per query.")

    device = model.device
    pool = _LazyPool(model, use_multi_process)
    cache = EmbeddingCache(cache_folder) if embedding_cache else None
    try:
        corpus_embeddings, corpus_embedded = _embed_shared(
            shards, model, texts.corpus, DOCUMENT, prompt_name=corpus_prompt_name, prompt=corpus_prompt,
            batch_size=batch_size, pool=pool.get, cache=cache, show_progress_bar=progress,
        )
        query_embeddings, query_embedded = _embed_shared(
            shards, model, texts.queries, QUERY, prompt_name=query_prompt_name, prompt=query_prompt,
            batch_size=batch_size, pool=pool.get, cache=cache, show_progress_bar=progress,
        )
    finally:
        pool.close()
    if cache is not None and verbose:
        print(
            f"[Cache] {cache.root}: embedded {corpus_embedded:,} of {len(texts.corpus):,} corpus texts and "
            f"{query_embedded:,} of {n_queries:,} queries; the rest were cached."
        )

    positive_scores = _pairwise_scores(model, query_embeddings, corpus_embeddings, texts, device)
    filters = CandidateFilters(absolute_margin, relative_margin, max_score, min_score)
    reserved_slots = max_positives + behaviour.extra_window_slots
    positives = _padded(texts.positive_indices, device)
    excluded = _padded([[index] for index in texts.query_self_indices(behaviour)], device)
    rescore = cross_encoder is not None and (
        behaviour.cross_encoder_always_rescores
        or any(value is not None for value in (absolute_margin, relative_margin, max_score, min_score))
    )
    search = _Search(model, query_embeddings, corpus_embeddings, device, faiss_batch_size, progress, shards)
    if rescore:
        window = range_max + reserved_slots
        raw_scores, raw_indices = search.raw_window(window)
        ce_scores, positive_scores = _rescore(
            cross_encoder, texts, raw_scores, raw_indices, batch_size, use_multi_process, device, progress
        )
        rules = make_rules(
            n_queries, positives=positives, positive_scores=_padded_scores(positive_scores, texts, device),
            excluded=excluded, exclude_positives=not include_positives, filters=filters,
            dtype=ce_scores.dtype, device=device,
        )
        negative_scores, indices, removed = select_candidates(
            ce_scores, raw_indices, rules=rules, range_min=range_min, range_max=range_max
        )
    else:
        negative_scores, indices, removed = search.filtered(
            num_negatives if sampling_strategy == "top" else range_max - range_min,
            positives=positives, positive_scores=_padded_scores(positive_scores, texts, device), excluded=excluded,
            exclude_positives=not include_positives, filters=filters, range_min=range_min, range_max=range_max,
            reserved_slots=reserved_slots,
        )

    if sampling_strategy == "top":
        indices, negative_scores = indices[:, :num_negatives], negative_scores[:, :num_negatives]
    elif sampling_strategy == "random":
        indices, negative_scores = _sample(indices, negative_scores, num_negatives)
    if verbose:
        print("Negative candidates mined, preparing dataset...")

    mined = MinedPairs(
        queries=texts.queries, corpus=texts.corpus, positive_indices=texts.positive_indices,
        all_queries=texts.pair_queries, positives=texts.pair_positives, positive_scores=positive_scores,
        indices=indices, negative_scores=negative_scores, num_negatives=num_negatives, dataset_rows=len(dataset),
    )
    formatted = format_output(mined, output_format, output_scores, anchor_column_name, positive_column_name)
    from datasets import Dataset

    output_dataset = Dataset.from_dict(formatted.columns)
    report = MiningReport(
        output_format=output_format,
        dataset_rows=len(dataset),
        output_rows=len(output_dataset),
        unique_queries=n_queries,
        corpus_size=len(texts.corpus),
        num_negatives=num_negatives,
        positive_scores=positive_scores.detach().float().cpu(),
        negative_scores=formatted.negative_scores.detach().float().cpu(),
        difference_scores=formatted.difference_scores.detach().float().cpu(),
        negatives_per_query=(negative_scores != -float("inf")).sum(dim=1).cpu(),
        removed=dict(zip(REMOVAL_NAMES, removed.tolist())),
        candidates=n_queries * (range_max + reserved_slots),
        filter_values={
            "absolute_margin": absolute_margin, "relative_margin": relative_margin,
            "max_score": max_score, "min_score": min_score,
        },
        maximum_possible_samples=formatted.maximum_possible_samples,
        range_min=range_min,
        embedded_texts=corpus_embedded + query_embedded,
    )
    if verbose:
        print(report.format_st_summary())
    return MiningResult(output_dataset, report)


# --------------------------------------------------------------------------------------------------
# Texts: unique queries, de-duplicated corpus, each query's positives


@dataclasses.dataclass
class _MiningTexts:
    queries: list[str]  # unique, first-seen order
    row_queries: list[str]  # one per dataset row
    corpus: list[str]  # de-duplicated: corpus + positives
    corpus_row: dict[str, int]
    positive_indices: list[list[int]]  # per unique query, unique corpus rows in first-seen order
    pair_queries: list[str]  # per (query, positive) pair, in query order
    pair_positives: list[str]
    query_is_own_positive: list[bool]  # include_positives and the query's text is one of its positives

    @classmethod
    def from_dataset(cls, dataset, anchor_column, positive_column, corpus, include_positives) -> _MiningTexts:
        row_queries = _to_list(dataset[anchor_column])
        row_positives = _to_list(dataset[positive_column])
        extra = row_positives if corpus is None else _to_list(corpus)
        unique_corpus = list(dict.fromkeys(extra + row_positives))
        corpus_row = {text: row for row, text in enumerate(unique_corpus)}
        queries = list(dict.fromkeys(row_queries))
        query_row = {query: row for row, query in enumerate(queries)}
        positive_indices: list[list[int]] = [[] for _ in queries]
        own_positive = [False] * len(queries)
        for query, positive in zip(row_queries, row_positives):
            row = query_row[query]
            if corpus_row[positive] not in positive_indices[row]:
                positive_indices[row].append(corpus_row[positive])
            if include_positives and query == positive:
                own_positive[row] = True
        pair_queries, pair_positives = [], []
        for row, query in enumerate(queries):
            pair_positives.extend(unique_corpus[index] for index in positive_indices[row])
            pair_queries.extend([query] * len(positive_indices[row]))
        return cls(
            queries, row_queries, unique_corpus, corpus_row, positive_indices, pair_queries, pair_positives, own_positive
        )

    def query_self_indices(self, behaviour: STBehaviour) -> list[int]:
        """Per query, the corpus row holding the query's own text that 6.3 excludes (-1: none)."""
        if not behaviour.excludes_query_text:
            return [-1] * len(self.queries)
        return [
            -1 if own else self.corpus_row.get(query, -1) for query, own in zip(self.queries, self.query_is_own_positive)
        ]


def _to_list(values) -> list:
    if isinstance(values, np.ndarray):
        return values.tolist()
    if type(values).__name__ == "Column":  # datasets' lazy column: materialise in one batch
        return list(values[:])
    return list(values)


def _rows_per_anchor(dataset, anchor_column: str, positive_column: str) -> list[int]:
    """Dataset rows per anchor with a positive, counted as sentence-transformers does (pandas groupby)."""
    frame = dataset.select_columns(list(dict.fromkeys([anchor_column, positive_column]))).to_pandas()
    return list(frame.groupby(anchor_column).count().to_dict()[positive_column].values())


# --------------------------------------------------------------------------------------------------
# Scores


def _pairwise_scores(model, query_embeddings, corpus_embeddings, texts: _MiningTexts, device) -> torch.Tensor:
    """[R] model.similarity_pairwise of each (query, positive) pair, as sentence-transformers computes them."""
    query_rows = [row for row, indices in enumerate(texts.positive_indices) for _ in indices]
    positive_rows = [index for indices in texts.positive_indices for index in indices]
    return model.similarity_pairwise(query_embeddings[query_rows], corpus_embeddings[positive_rows]).to(device)


def _padded(rows: list[list[int]], device) -> torch.Tensor:
    width = max((len(row) for row in rows), default=0)
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long, device=device).reshape(
        len(rows), width
    )


def _padded_scores(flat_scores: torch.Tensor, texts: _MiningTexts, device) -> torch.Tensor:
    """[R] per-pair scores as [Q, P], matching :func:`_padded` of the positive indices (padding 0)."""
    counts = [len(row) for row in texts.positive_indices]
    width = max(counts, default=0)
    matrix = torch.zeros((len(counts), width), dtype=flat_scores.dtype, device=device)
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    columns = torch.cat([torch.arange(count) for count in counts]) if counts else torch.empty(0, dtype=torch.long)
    matrix[rows.to(device), columns.to(device)] = flat_scores.to(device)
    return matrix


class _Search:
    """The streamed top-k over query chunks of ``faiss_batch_size``, with sentence-transformers' progress bar.

    With ``shards``, :meth:`filtered` searches this rank's share of the queries and gathers the rest.
    """

    def __init__(self, model, query_embeddings, corpus_embeddings, device, chunk_size: int, progress: bool,
                 shards: Shards | None = None):
        similarity_name = model.similarity_fn_name
        similarity_name = getattr(similarity_name, "value", similarity_name)  # an enum member or its string
        queries = torch.as_tensor(query_embeddings).to(device)
        corpus = torch.as_tensor(corpus_embeddings).to(device)
        self.similarity = None
        if similarity_name == "cosine":
            # What util.cos_sim does before its matrix product.
            queries = torch.nn.functional.normalize(queries, p=2, dim=-1)
            corpus = torch.nn.functional.normalize(corpus, p=2, dim=-1)
        elif similarity_name != "dot":
            self.similarity = model.similarity  # not a GEMM: the reference streams it tile by tile
        self.queries, self.corpus = queries, corpus
        self.chunk_size, self.progress, self.shards = chunk_size, progress, shards

    def _chunks(self, start: int = 0, stop: int | None = None):
        from tqdm.autonotebook import trange

        stop = self.queries.shape[0] if stop is None else stop
        return trange(start, stop, self.chunk_size, desc="Computing similarity scores", disable=not self.progress)

    def raw_window(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[Q, window] best rows by raw score, no rules (for cross-encoder rescoring)."""
        empty = torch.empty((self.queries.shape[0], 0), dtype=torch.long, device=self.queries.device)
        scores, indices = [], []
        for start in self._chunks():
            stop = start + self.chunk_size
            result = run_hard_negative_topk(
                self.queries[start:stop], self.corpus, window, positives=empty[start:stop], positive_scores=None,
                excluded=empty[start:stop], exclude_positives=False, absolute_margin=None, relative_margin=None,
                max_score=None, min_score=None, range_min=0, range_max=None, reserved_slots=None,
                similarity=self.similarity,
            )
            scores.append(result.scores)
            indices.append(result.indices)
        return torch.cat(scores), torch.cat(indices)

    def filtered(self, k, *, positives, positive_scores, excluded, exclude_positives, filters, range_min, range_max,
                 reserved_slots):
        """[Q, k] survivors of the rules in sentence-transformers' window, and the removal counts."""
        first, last = (0, self.queries.shape[0]) if self.shards is None else self.shards.span(self.queries.shape[0])
        scores = [self.queries.new_empty((0, k))]
        indices = [torch.empty((0, k), dtype=torch.long, device=self.queries.device)]
        removed = torch.zeros(len(REMOVAL_NAMES), dtype=torch.long, device=self.queries.device)
        for start in self._chunks(first, last):
            stop = min(start + self.chunk_size, last)
            result = run_hard_negative_topk(
                self.queries[start:stop], self.corpus, k, positives=positives[start:stop],
                positive_scores=positive_scores[start:stop], excluded=excluded[start:stop],
                exclude_positives=exclude_positives, absolute_margin=filters.absolute_margin,
                relative_margin=filters.relative_margin, max_score=filters.max_score, min_score=filters.min_score,
                range_min=range_min, range_max=range_max, reserved_slots=reserved_slots, similarity=self.similarity,
            )
            scores.append(result.scores)
            indices.append(result.indices)
            removed += result.removed
        scores, indices = torch.cat(scores), torch.cat(indices)
        if self.shards is not None:
            parts = self.shards.gather((scores.cpu(), indices.cpu(), removed.cpu()))
            device = self.queries.device
            scores = torch.cat([part[0] for part in parts]).to(device)
            indices = torch.cat([part[1] for part in parts]).to(device)
            removed = sum(part[2] for part in parts).to(device)
        return scores, indices, removed


def _embed_shared(shards: Shards | None, model, texts: list[str], role: str, **options) -> tuple[np.ndarray, int]:
    """:func:`embed_texts`, or with ``shards`` this rank's share of ``texts``, gathered into the whole."""
    if shards is None:
        return embed_texts(model, texts, role, **options)
    start, stop = shards.span(len(texts))
    part, embedded = embed_texts(model, texts[start:stop], role, **options) if stop > start else (None, 0)
    parts = shards.gather((part, embedded))
    arrays = [array for array, _ in parts if array is not None and len(array)]
    return np.concatenate(arrays), sum(count for _, count in parts)


def _rescore(
    cross_encoder, texts: _MiningTexts, raw_scores, raw_indices, batch_size, use_multi_process, device, progress
):
    """Cross-encoder scores of every raw candidate [Q, W] and of every (query, positive) pair [R]."""
    from tqdm.autonotebook import tqdm

    scores = raw_scores.clone()
    pool = _LazyPool(cross_encoder, use_multi_process)
    try:
        # The same pairs in the same batches as sentence-transformers, padding slots (index -1, read as the
        # last corpus text) included, so a real cross-encoder's batch padding gives the same numbers.
        rows = tqdm(
            enumerate(raw_indices.tolist()), desc="Rescoring with CrossEncoder", total=len(raw_indices),
            disable=not progress,
        )
        for row, candidates in rows:
            query = texts.queries[row]
            passages = [texts.corpus[index] for index in candidates]
            predicted = cross_encoder.predict(
                list(zip([query] * len(passages), passages)), batch_size=batch_size, convert_to_tensor=True,
                pool=pool.get(),
            )
            scores[row] = torch.as_tensor(predicted).to(device)
        positive_scores = cross_encoder.predict(
            list(zip(texts.pair_queries, texts.pair_positives)), batch_size=batch_size, convert_to_tensor=True,
            pool=pool.get(),
        )
    finally:
        pool.close()
    return scores, torch.as_tensor(positive_scores).to(device)


def _sample(indices: torch.Tensor, negative_scores: torch.Tensor, num_negatives: int):
    """sentence-transformers' "random" strategy: ``num_negatives`` of each row's candidates, uniformly
    without replacement, drawn with Python's ``random`` exactly as it draws them, then sorted by score."""
    num_options = (indices.size(1) - negative_scores.isinf().sum(1)).clamp(min=num_negatives)
    sampled = [random.sample(range(options), k=num_negatives) for options in num_options.tolist()]
    rows = torch.arange(indices.size(0), device=indices.device).unsqueeze(-1)
    sampled = torch.tensor(sampled, dtype=torch.long, device=indices.device).reshape(indices.size(0), num_negatives)
    indices, negative_scores = indices[rows, sampled], negative_scores[rows, sampled]
    negative_scores, order = negative_scores.sort(dim=1, descending=True, stable=True)
    return indices[rows, order], negative_scores


class _LazyPool:
    """A multi-process pool started on first use (never, when everything was cached)."""

    def __init__(self, model, use_multi_process):
        self.model, self.use_multi_process = model, use_multi_process
        self.pool, self.started = None, False

    def get(self):
        if self.use_multi_process and not self.started:
            target = None if isinstance(self.use_multi_process, bool) else self.use_multi_process
            self.pool, self.started = self.model.start_multi_process_pool(target_devices=target), True
        return self.pool

    def close(self) -> None:
        if self.started:
            self.model.stop_multi_process_pool(self.pool)
            self.pool, self.started = None, False
