"""Held-out evaluation: retrieval, kNN classification and the spread of the embedding space."""

from embedplug.evaluation.embedding import encode
from embedplug.evaluation.knn import knn_accuracy
from embedplug.evaluation.retrieval import retrieval_metrics
from embedplug.evaluation.spread import CollapseWarning, SpreadReport, embedding_spread
from embedplug.evaluation.suites import Evaluation, KNNEvaluation, RetrievalEvaluation, run_evaluations

__all__ = [
    "CollapseWarning",
    "Evaluation",
    "KNNEvaluation",
    "RetrievalEvaluation",
    "SpreadReport",
    "embedding_spread",
    "encode",
    "knn_accuracy",
    "retrieval_metrics",
    "run_evaluations",
]
