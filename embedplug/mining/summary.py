"""What a mining run produced: sentence-transformers' printed summary, and a fuller one for ``embedplug mine``."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import torch

from embedplug.reference.hard_negative_topk import FILTER_NAMES

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclasses.dataclass
class MiningReport:
    """Counts and score tensors of one run (scores float32 on CPU).

    ``removed`` maps each rule of :data:`embedplug.reference.hard_negative_topk.REMOVAL_NAMES` to the
    candidates it removed out of ``candidates`` (queries x raw rows retrieved per query).
    """

    output_format: str
    dataset_rows: int
    output_rows: int
    unique_queries: int
    corpus_size: int
    num_negatives: int
    positive_scores: torch.Tensor
    negative_scores: torch.Tensor
    difference_scores: torch.Tensor
    negatives_per_query: torch.Tensor  # [unique queries] negatives found per query
    removed: dict[str, int]
    candidates: int
    filter_values: dict[str, float | None]
    maximum_possible_samples: int
    range_min: int
    embedded_texts: int

    # ----------------------------------------------------------------------------------------------
    # sentence-transformers' verbose output

    def format_st_summary(self) -> str:
        """The table and lines ``mine_hard_negatives(verbose=True)`` prints, from this run's numbers."""
        row = "{:<6} {:>14} {:>14} {:>14}"
        lines = [row.format("Metric", "Positive", "Negative", "Difference")]
        lines.append(row.format("Count", f"{len(self.positive_scores):,}", f"{len(self.negative_scores):,}", ""))
        statistics = [
            ("Mean", torch.mean), ("Median", torch.median), ("Std", torch.std), ("Min", torch.min),
            ("25%", lambda s: _quantile(s, 0.25)), ("50%", lambda s: _quantile(s, 0.5)),
            ("75%", lambda s: _quantile(s, 0.75)), ("Max", torch.max),
        ]
        for name, statistic in statistics:
            cells = [_statistic(statistic, scores) for scores in self._score_columns()]
            lines.append(row.format(name, *cells))
        lines += self._skipped_lines()
        missing = self.maximum_possible_samples - self.output_rows
        if missing > 0:
            solutions = ["range_max"] + (["range_min"] if self.range_min > 0 else [])
            solutions += [
                name for name in ("absolute_margin", "relative_margin", "max_score") if self.filter_values[name] is not None
            ]
            considerations = solutions[0] if len(solutions) == 1 else ", ".join(solutions[:-1]) + " and " + solutions[-1]
            lines.append(
                f"Could not find enough negatives for {missing} samples ({missing / self.maximum_possible_samples:.2%})."
                f" Consider adjusting the {considerations} parameter{'s' if len(solutions) > 1 else ''} if you'd like"
                " to find more valid negatives."
            )
        return "\n".join(lines)

    def _score_columns(self):
        return self.positive_scores, self.negative_scores, self.difference_scores

    def _skipped_lines(self) -> list[str]:
        # Ratios as sentence-transformers computes them: the margins shrink the pool for later rules.
        lines, pool = [], self.candidates
        for name in FILTER_NAMES:
            skipped = self.removed.get(name, 0)
            if not skipped:
                continue
            lines.append(
                f"Skipped {skipped:,} potential negatives ({skipped / pool:.2%}) due to the {name} of "
                f"{self.filter_values[name]}."
            )
            if name in ("absolute_margin", "relative_margin"):
                pool -= skipped
        return lines

    # ----------------------------------------------------------------------------------------------
    # embedplug mine

    def format_summary(self) -> str:
        """A summary for people: rows, negatives per query, score quantiles, what each filter removed."""
        lines = [
            f"Mined {self.output_rows:,} rows ({self.output_format}) from {self.dataset_rows:,} input rows: "
            f"{self.unique_queries:,} unique queries, a corpus of {self.corpus_size:,} unique texts "
            f"(embedded {self.embedded_texts:,} of {self.unique_queries + self.corpus_size:,} texts, the rest "
            "came from the cache).",
            f"Negatives per query (asked for {self.num_negatives}): " + self._negatives_histogram() + ".",
            "",
            "Scores         count     mean "
            + " ".join(f"{_quantile_label(q):>7}" for q in QUANTILES)
            + "      min      max",
        ]
        for label, scores in zip(("positive", "negative", "pos - neg"), self._score_columns()):
            quantiles = " ".join(f"{_number(scores, lambda s, q=q: _quantile(s, q)):>7}" for q in QUANTILES)
            lines.append(
                f"{label:<10} {len(scores):>9,} {_number(scores, torch.mean):>8} {quantiles} "
                f"{_number(scores, torch.min):>8} {_number(scores, torch.max):>8}"
            )
        lines += [
            "",
            f"Candidates considered: {self.candidates:,} (the best raw rows per query, as sentence-transformers "
            "retrieves them)",
        ]
        for name, count in self.removed.items():
            setting = "" if name in ("excluded", "positives") else f" (= {self.filter_values[name]})"
            # The query's own text is only dropped by sentence-transformers >= 6.3: show it when it happened.
            if (name == "excluded" and count) or name == "positives" or self.filter_values.get(name) is not None:
                label = {"excluded": "the query's own text", "positives": "positives"}.get(name, name) + setting
                share = f"{count / self.candidates:.2%}" if self.candidates else "-"
                lines.append(f"  removed {label:<30} {count:>12,}  {share:>7}")
        return "\n".join(lines)

    def _negatives_histogram(self) -> str:
        counts = Counter(self.negatives_per_query.tolist())
        return ", ".join(
            f"{found} for {queries:,} {'query' if queries == 1 else 'queries'}"
            for found, queries in sorted(counts.items(), reverse=True)
        )

    def to_json(self) -> dict:
        """The numbers of :meth:`format_summary` as plain JSON values."""
        return {
            "output_format": self.output_format,
            "dataset_rows": self.dataset_rows,
            "output_rows": self.output_rows,
            "unique_queries": self.unique_queries,
            "corpus_size": self.corpus_size,
            "num_negatives": self.num_negatives,
            "negatives_per_query": {str(k): v for k, v in sorted(Counter(self.negatives_per_query.tolist()).items())},
            "scores": {
                label: _distribution(scores)
                for label, scores in zip(("positive", "negative", "difference"), self._score_columns())
            },
            "candidates": self.candidates,
            "removed": dict(self.removed),
            "filters": dict(self.filter_values),
            "embedded_texts": self.embedded_texts,
        }


def _quantile(scores: torch.Tensor, q: float) -> float:
    # numpy: torch.quantile refuses inputs above 2**24 elements; both interpolate linearly.
    return float(np.quantile(scores.float().numpy(), q))


def _statistic(statistic, scores: torch.Tensor) -> str:
    if scores.numel() == 0:
        return "-"
    return f"{float(statistic(scores.float())):.4f}"


def _number(scores: torch.Tensor, statistic) -> str:
    return "-" if scores.numel() == 0 else f"{float(statistic(scores.float())):.4f}"


def _quantile_label(q: float) -> str:
    return f"{q:.0%}"


def _distribution(scores: torch.Tensor) -> dict:
    if scores.numel() == 0:
        return {"count": 0}
    scores = scores.float()
    summary = {"count": scores.numel(), "mean": float(scores.mean()), "min": float(scores.min()), "max": float(scores.max())}
    summary.update({_quantile_label(q): _quantile(scores, q) for q in QUANTILES})
    return summary
