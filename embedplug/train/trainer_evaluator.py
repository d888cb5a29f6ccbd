"""Our held-out evaluations as a sentence-transformers evaluator, for evaluation and early stopping in training."""

from __future__ import annotations

from collections.abc import Sequence

from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from embedplug.evaluation.suites import Evaluation


class HeldOutEvaluator(SentenceEvaluator):
    """Runs each evaluation and reports ``<evaluation>_<metric>``; the primary metric is the first one's."""

    def __init__(self, evaluations: Sequence[Evaluation], batch_size: int = 128) -> None:
        super().__init__()
        self.evaluations = list(evaluations)
        self.batch_size = batch_size
        first = self.evaluations[0]
        self.primary_metric = f"{first.name}_{first.primary_metric}"
        self.greater_is_better = True

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evaluation in self.evaluations:
            # No progress bars here: they would interleave with the trainer's.
            for metric, value in evaluation.run(model, self.batch_size, show_progress_bar=False).items():
                metrics[f"{evaluation.name}_{metric}"] = value
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
