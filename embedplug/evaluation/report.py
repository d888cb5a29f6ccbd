"""Before/after tables and the metrics JSON written beside the trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Metrics = dict[str, dict[str, float]]


def format_comparison(before: Metrics, after: Metrics | None = None) -> str:
    """A fixed-width table: one row per (evaluation, metric), columns before / after / change."""
    header = ("EVALUATION", "METRIC", "BEFORE") + (("AFTER", "CHANGE") if after is not None else ())
    rows = []
    for evaluation, metrics in before.items():
        for metric, value in metrics.items():
            row = (evaluation, metric, f"{value:.4f}")
            if after is not None:
                new = after.get(evaluation, {}).get(metric)
                row += ("-", "-") if new is None else (f"{new:.4f}", f"{new - value:+.4f}")
            rows.append(row)
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows))
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically (an interrupted run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON in ``path``, or ``None`` if there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None
