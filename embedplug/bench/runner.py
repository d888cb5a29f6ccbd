"""Runs the headline benchmark: every implementation on the same inputs in one process, with ratios."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from embedplug.bench import batch_hard_cases, peers
from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.bench.timing import STABLE_SECONDS, Timing, time_call

FLOOR = "gemm floor (torch.mm)"
FUSED = "embedplug fused"


@dataclass
class Measurement:
    loss: str
    implementation: str
    n: int
    dim: int
    seconds: float  # median time per call, forward + backward
    peak_extra_bytes: int | None
    q1_seconds: float = 0.0  # interquartile range of the samples
    q3_seconds: float = 0.0
    samples: int = 0
    calls_per_sample: int = 0
    measured_seconds: float = 0.0  # all samples together; below STABLE_SECONDS the case is not stable

    @property
    def spread(self) -> float:
        return Timing(self.seconds, self.q1_seconds, self.q3_seconds, self.samples, self.calls_per_sample,
                      self.measured_seconds).spread

    @property
    def stable(self) -> bool:
        return self.measured_seconds >= STABLE_SECONDS


def measure(fn, inputs, repeats: int, min_seconds: float = STABLE_SECONDS) -> tuple[Timing, int | None]:
    """The timing of ``fn(inputs)`` (see :func:`embedplug.bench.timing.time_call`) after one warm-up call,
    and that warm-up's peak extra memory."""
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    return time_call(lambda: fn(inputs), repeats, min_seconds), peak


def run(sizes, dims, repeats: int = 3, implementations=None, log=print, min_seconds: float = STABLE_SECONDS) -> list[Measurement]:
    cases = batch_hard_cases.available_implementations()
    if implementations:
        cases = {name: fn for name, fn in cases.items() if name in implementations or name == FLOOR}
    results = []
    for dim in dims:
        for n in sizes:
            inputs = batch_hard_cases.make_inputs(n, dim)
            for name, fn in cases.items():
                timing, peak = measure(fn, inputs, repeats, min_seconds)
                results.append(
                    Measurement(
                        "BatchHardTripletLoss", name, n, dim, timing.median, peak, timing.q1, timing.q3,
                        timing.samples, timing.loops, timing.measured_seconds,
                    )
                )
                log(
                    f"  N={n:>6} D={dim:>4} {name:<30} {_ms(timing.median):>10} ms ±{timing.spread:4.0%} "
                    f"({timing.samples} x {timing.loops} calls)  peak +{_mib(peak)}"
                )
    return results


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits (0.0853, 1.27, 428)."""
    return f"{seconds * 1e3:.3g}"


UNSTABLE_MARK = "*"


def markdown_table(results: list[Measurement]) -> str:
    """One row per (N, D, implementation): the median time and its spread, then the time as a multiple of
    the GEMM floor's and of embedplug fused's (above 1: slower than it), and peak extra memory. Cases
    measured too briefly to be stable are marked, with a note under the table."""
    by_case = {}
    for m in results:
        by_case.setdefault((m.n, m.dim), {})[m.implementation] = m
    lines = [
        "| N | D | implementation | median ms (fwd+bwd) | spread (IQR) | time / GEMM floor | time / embedplug fused "
        "| peak extra memory |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (n, dim), row in sorted(by_case.items(), key=lambda item: (item[0][1], item[0][0])):
        floor = row.get(FLOOR)
        fused = row.get(FUSED)
        for name, m in row.items():
            vs_floor = f"{m.seconds / floor.seconds:.2f}" if floor else "–"
            vs_fused = f"{m.seconds / fused.seconds:.2f}" if fused and name != FLOOR else "–"
            mark = "" if m.stable else UNSTABLE_MARK
            lines.append(
                f"| {n} | {dim} | {name} | {_ms(m.seconds)}{mark} | ±{m.spread:.0%} | {vs_floor} | {vs_fused} "
                f"| {_mib(m.peak_extra_bytes)} |"
            )
    unstable = [m for m in results if not m.stable]
    if unstable:
        lines += [
            "",
            f"{UNSTABLE_MARK} measured for less than {STABLE_SECONDS:g} s in all ({len(unstable)} of {len(results)} "
            f"cases): not stable enough to compare; raise --min-time (default {STABLE_SECONDS:g} s per case)",
        ]
    return "\n".join(lines)


def environment() -> dict:
    """What the numbers depend on (written to bench.json; :func:`describe_environment` prints it)."""
    from embedplug import _extension

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "sentence_transformers": peers.installed_label("sentence-transformers"),
        "pytorch_metric_learning": peers.installed_label("pytorch-metric-learning"),
        "extension": "loaded" if _extension.STATUS.loaded else f"not loaded ({_extension.STATUS.reason})",
    }


def describe_environment(env: dict) -> str:
    """One readable line: ``torch 2.13.0+cpu, 2 threads, x86_64, Python 3.11.7; peers ...; embedplug._C ...``."""
    processor = env["processor"] if env["processor"] != env["machine"] else env["machine"]
    return (
        f"torch {env['torch']}, {env['threads']} thread{'s' if env['threads'] != 1 else ''}, {processor}, "
        f"Python {env['python']}; peers: {env['sentence_transformers']}, {env['pytorch_metric_learning']}; "
        f"embedplug._C {env['extension']}"
    )


def write_json(results: list[Measurement], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment(),
        "results": [{**asdict(m), "spread": m.spread, "stable": m.stable} for m in results],
    }
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
