"""Runs the headline benchmark: every implementation on the same inputs in one process, with ratios."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from embedplug.bench import batch_hard_cases
from embedplug.bench.memory import peak_extra_memory_bytes

FLOOR = "gemm floor (torch.mm)"
PEER = "sentence-transformers 6.2"


@dataclass
class Measurement:
    loss: str
    implementation: str
    n: int
    dim: int
    seconds: float  # median over repeats, forward + backward
    peak_extra_bytes: int | None


def measure(fn, inputs, repeats: int) -> tuple[float, int | None]:
    """Median wall time of ``repeats`` runs after one warm-up, and the warm-up's peak extra memory."""
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def run(sizes, dims, repeats: int = 3, implementations=None, log=print) -> list[Measurement]:
    cases = batch_hard_cases.available_implementations()
    if implementations:
        cases = {name: fn for name, fn in cases.items() if name in implementations or name == FLOOR}
    results = []
    for dim in dims:
        for n in sizes:
            inputs = batch_hard_cases.make_inputs(n, dim)
            for name, fn in cases.items():
                seconds, peak = measure(fn, inputs, repeats)
                results.append(Measurement("BatchHardTripletLoss", name, n, dim, seconds, peak))
                log(f"  N={n:>6} D={dim:>4} {name:<28} {seconds * 1e3:9.1f} ms  peak +{_mib(peak)}")
    return results


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def markdown_table(results: list[Measurement]) -> str:
    """One row per (N, D, implementation): time, x GEMM floor, speed-up of embedplug vs each, memory."""
    by_case = {}
    for m in results:
        by_case.setdefault((m.n, m.dim), {})[m.implementation] = m
    lines = [
        "| N | D | implementation | fwd+bwd (ms) | × GEMM floor | embedplug fused speed-up | peak extra memory |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (n, dim), row in sorted(by_case.items(), key=lambda item: (item[0][1], item[0][0])):
        floor = row.get(FLOOR)
        fused = row.get("embedplug fused")
        for name, m in row.items():
            vs_floor = f"{m.seconds / floor.seconds:.2f}" if floor else "–"
            speedup = f"{m.seconds / fused.seconds:.1f}×" if fused and name not in (FLOOR,) else "–"
            lines.append(
                f"| {n} | {dim} | {name} | {m.seconds * 1e3:.1f} | {vs_floor} | {speedup} | {_mib(m.peak_extra_bytes)} |"
            )
    return "\n".join(lines)


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def write_json(results: list[Measurement], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), "results": [asdict(m) for m in results]}
    path.write_text(json.dumps(payload, indent=2))


def write_plot(results: list[Measurement], path: Path) -> None:
    """Time and peak memory against N, one line per implementation (log-log), one panel pair per D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({m.dim for m in results})
    figure, axes = plt.subplots(len(dims), 2, figsize=(11, 4 * len(dims)), squeeze=False)
    for row, dim in enumerate(dims):
        for name in dict.fromkeys(m.implementation for m in results):
            points = sorted((m.n, m.seconds, m.peak_extra_bytes) for m in results if m.dim == dim and m.implementation == name)
            axes[row][0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
            memory = [(p[0], p[2] / 2**20) for p in points if p[2]]
            if memory:
                axes[row][1].plot([p[0] for p in memory], [p[1] for p in memory], marker="o", label=name)
        axes[row][0].set(xscale="log", yscale="log", xlabel="N", ylabel="seconds (fwd+bwd)", title=f"time, D={dim}")
        axes[row][1].set(xscale="log", yscale="log", xlabel="N", ylabel="MiB", title=f"peak extra memory, D={dim}")
        axes[row][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
