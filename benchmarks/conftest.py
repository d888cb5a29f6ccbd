"""Collects every benchmark's median and prints ratio tables at the end of the run."""

from __future__ import annotations

import pytest

from embedplug.bench.runner import Measurement, markdown_table

_RESULTS: list[Measurement] = []


@pytest.fixture
def record():
    """``record(loss, implementation, n, dim, benchmark, peak_bytes)`` after a benchmark ran."""

    def _record(loss, implementation, n, dim, benchmark, peak_bytes):
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: a smoke run, nothing to report
            return
        _RESULTS.append(Measurement(loss, implementation, n, dim, stats.stats.median, peak_bytes))
        benchmark.extra_info["peak_extra_mib"] = None if peak_bytes is None else round(peak_bytes / 2**20, 1)

    return _record


def pytest_terminal_summary(terminalreporter):
    losses = sorted({m.loss for m in _RESULTS})
    for loss in losses:
        terminalreporter.write_sep("=", f"{loss}: medians measured side by side in this run")
        terminalreporter.write_line(markdown_table([m for m in _RESULTS if m.loss == loss]))
