"""Named held-out evaluations: what to embed, and which metrics to compute from the embeddings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import torch

from embedplug.evaluation.embedding import encode
from embedplug.evaluation.knn import knn_accuracy
from embedplug.evaluation.retrieval import retrieval_metrics
from embedplug.evaluation.spread import embedding_spread, warn_if_collapsed


class Evaluation(Protocol):
    """One held-out evaluation; ``primary_metric`` is what early stopping and the summary look at."""

    name: str
    primary_metric: str

    def run(self, model, batch_size: int = 128, show_progress_bar: bool = True) -> dict[str, float]: ...


@dataclasses.dataclass
class RetrievalEvaluation:
    """Each query has one relevant corpus text; recall@1, recall@10, MRR@10, plus the spread of the queries.

    ``query_classes`` (optional, one label per query) are used only for the spread report.
    """

    name: str
    queries: Sequence[str]
    corpus: Sequence[str]
    relevant_index: Sequence[int]
    query_classes: Sequence[int] | None = None
    primary_metric: str = "recall@1"

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.relevant_index):
            raise ValueError(f"{self.name}: one relevant corpus index per query is required")

    def run(self, model, batch_size: int = 128, show_progress_bar: bool = True) -> dict[str, float]:
        query_embeddings = encode(model, self.queries, batch_size, show_progress_bar)
        corpus_embeddings = encode(model, self.corpus, batch_size, show_progress_bar)
        metrics = retrieval_metrics(
            query_embeddings, corpus_embeddings, torch.tensor(list(self.relevant_index), dtype=torch.long)
        )
        if self.query_classes is not None:
            metrics.update(_spread_metrics(self.name, query_embeddings, self.query_classes))
        return metrics


@dataclasses.dataclass
class KNNEvaluation:
    """kNN@1 accuracy of labelled held-out queries against a labelled reference set, plus their spread."""

    name: str
    queries: Sequence[str]
    query_labels: Sequence[int]
    references: Sequence[str]
    reference_labels: Sequence[int]
    k: int = 1
    primary_metric: str = "knn@1"

    def __post_init__(self) -> None:
        self.primary_metric = f"knn@{self.k}"
        if len(self.queries) != len(self.query_labels) or len(self.references) != len(self.reference_labels):
            raise ValueError(f"{self.name}: one label per query and per reference is required")

    def run(self, model, batch_size: int = 128, show_progress_bar: bool = True) -> dict[str, float]:
        query_embeddings = encode(model, self.queries, batch_size, show_progress_bar)
        reference_embeddings = encode(model, self.references, batch_size, show_progress_bar)
        query_labels = torch.tensor(list(self.query_labels), dtype=torch.long)
        accuracy = knn_accuracy(
            query_embeddings,
            query_labels,
            reference_embeddings,
            torch.tensor(list(self.reference_labels), dtype=torch.long),
            k=self.k,
        )
        return {self.primary_metric: accuracy, **_spread_metrics(self.name, query_embeddings, self.query_labels)}


def _spread_metrics(name: str, embeddings: torch.Tensor, classes: Sequence[int]) -> dict[str, float]:
    report = embedding_spread(embeddings, torch.tensor(list(classes), dtype=torch.long))
    warn_if_collapsed(report, name)
    return report.as_metrics()


def run_evaluations(
    model, evaluations: Sequence[Evaluation], batch_size: int = 128, show_progress_bar: bool = True
) -> dict[str, dict[str, float]]:
    """``{evaluation name: {metric: value}}`` for every evaluation, in order."""
    return {
        evaluation.name: evaluation.run(model, batch_size=batch_size, show_progress_bar=show_progress_bar)
        for evaluation in evaluations
    }
