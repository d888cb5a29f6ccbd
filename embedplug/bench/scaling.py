"""Scaling study: time and peak extra memory of every fused loss as the batch N doubles, in one
process and in 2 gloo processes on this machine (the global N split over the ranks, losses with
``gather_across_devices=True``), next to sentence-transformers wherever its N x N matrices fit.

Each point is one forward+backward on random float32 embeddings (P x K labels with K = 4 for the
labelled losses, (anchor, positive) pairs with a guide of the same width for GIST). The one-process
run uses every thread torch has; each of the 2 processes uses half of them, so both runs use the
same cores. Memory is each process's peak resident memory above its level before the call
(:func:`embedplug.bench.memory.peak_extra_memory_bytes`); in 2 processes the larger of the two, and
``beyond_gathered`` subtracts the gathered embeddings themselves (all ranks' rows of every gathered
column: the part any all-gather implementation must hold).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.bench.peers import SENTENCE_TRANSFORMERS

EXTRA_MEMORY_BUDGET = 4 * 2**30
K = 4
TEMPERATURE = 0.01

# sentence-transformers' peak extra memory as a multiple of one float32 N x N matrix, from the
# measured tables in docs/ (rounded up): the peer runs only where this fits EXTRA_MEMORY_BUDGET.
_PEER_MATRICES = {
    "MultipleNegativesRankingLoss": 4,
    "GISTEmbedLoss": 0,  # broadcasts N x N x D tensors instead: see peer_fits
    "BatchHardTripletLoss": 10,
    "BatchHardSoftMarginTripletLoss": 10,
    "BatchSemiHardTripletLoss": 19,
    "BatchAllTripletLoss": 28,
}
LOSS_NAMES = tuple(_PEER_MATRICES)


@dataclass
class ScalingPoint:
    loss: str
    implementation: str  # "embedplug fused" or peers.SENTENCE_TRANSFORMERS ("sentence-transformers 6.2.0")
    processes: int
    n: int  # global batch
    dim: int
    seconds: float
    peak_extra_bytes: int | None  # per process (the larger rank's)
    gathered_bytes: int  # the gathered embeddings every rank holds (0 in one process)

    @property
    def beyond_gathered_bytes(self) -> int | None:
        return None if self.peak_extra_bytes is None else max(self.peak_extra_bytes - self.gathered_bytes, 0)


def peer_fits(loss: str, n: int, dim: int) -> bool:
    if loss == "GISTEmbedLoss":
        # sentence-transformers' GIST broadcasts N x N x D similarity inputs: 3.8 GiB measured at
        # N = 512, D = 384, 15 GiB at N = 1024 (docs/gist-losses.md), about 10 N^2 D floats.
        return 10 * n * n * dim * 4 <= EXTRA_MEMORY_BUDGET
    return _PEER_MATRICES[loss] * n * n * 4 <= EXTRA_MEMORY_BUDGET


def _columns(loss: str, rows: int, dim: int, generator: torch.Generator):
    """(student columns requiring grad, guide columns or None, labels or None) of one rank's rows."""
    if loss in ("MultipleNegativesRankingLoss", "GISTEmbedLoss"):
        anchor = torch.randn(rows, dim, generator=generator)
        positive = anchor + torch.randn(rows, dim, generator=generator)
        guide = None
        if loss == "GISTEmbedLoss":
            guide_anchor = torch.randn(rows, dim, generator=generator)
            guide = [guide_anchor, guide_anchor + torch.randn(rows, dim, generator=generator)]
        return [anchor.requires_grad_(), positive.requires_grad_()], guide, None
    embeddings = torch.randn(rows, dim, generator=generator).requires_grad_()
    return [embeddings], None, None


def _labels(n: int, rank_rows: slice) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    labels = (torch.arange(n) // K)[torch.randperm(n, generator=generator)]
    return labels[rank_rows]


def gathered_columns(loss: str) -> int:
    """How many [N, D] columns the gathered loss holds from all ranks."""
    return {"GISTEmbedLoss": 2, "MultipleNegativesRankingLoss": 1}.get(loss, 1)


def embedplug_step(loss: str, gather: bool) -> Callable:
    import embedplug.losses as L

    def step(columns, guide, labels) -> None:
        if loss == "GISTEmbedLoss":
            module = L.GISTEmbedLoss(None, None, temperature=TEMPERATURE, gather_across_devices=gather)
            value = module.compute_loss_from_embeddings(columns, guide_embeddings=guide)
        elif loss == "MultipleNegativesRankingLoss":
            value = L.MultipleNegativesRankingLoss(None, gather_across_devices=gather).compute_loss_from_embeddings(columns)
        else:
            value = getattr(L, loss)(None, gather_across_devices=gather).compute_loss_from_embeddings(columns, labels)
        value.backward()

    return step


def peer_step(loss: str) -> Callable:
    from embedplug.bench import in_batch_negatives_cases

    def step(columns, guide, labels) -> None:
        if loss == "GISTEmbedLoss":
            inputs = in_batch_negatives_cases.Inputs(columns[0], columns[1], guide[0], guide[1])
            in_batch_negatives_cases.gist_sentence_transformers(inputs)
            return
        import sentence_transformers.sentence_transformer.losses as st

        if loss == "MultipleNegativesRankingLoss":
            value = st.MultipleNegativesRankingLoss(None).compute_loss_from_embeddings(columns, None)
        else:
            method_name = {
                "BatchHardTripletLoss": "batch_hard_triplet_loss",
                "BatchHardSoftMarginTripletLoss": "batch_hard_triplet_soft_margin_loss",
                "BatchSemiHardTripletLoss": "batch_semi_hard_triplet_loss",
                "BatchAllTripletLoss": "batch_all_triplet_loss",
            }[loss]
            method = getattr(getattr(st, loss)(None), method_name)
            value = method(labels, columns[0])
        value.backward()

    return step


def _measure(step: Callable, loss: str, rows: slice, n: int, dim: int, repeats: int, barrier=None):
    generator = torch.Generator().manual_seed(rows.start + 7)
    columns, guide, _ = _columns(loss, rows.stop - rows.start, dim, generator)
    labels = _labels(n, rows)

    def once() -> None:
        for column in columns:
            column.grad = None
        step(columns, guide, labels)

    if barrier:
        barrier()
    start = time.perf_counter()
    peak = peak_extra_memory_bytes(once)
    # With repeats=0 the memory run (the first, cold call) is also the time.
    times = [time.perf_counter() - start] if repeats == 0 else []
    for _ in range(repeats):
        if barrier:
            barrier()
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def _warm_up(step: Callable, loss: str, rows: slice, n: int, dim: int) -> None:
    # Lazy imports and first-call allocations would otherwise be charged to the first size measured.
    _measure(step, loss, rows, n, dim, repeats=1)


def one_process(losses, sizes, dim: int, repeats: int, peers: bool = True, log=print) -> list[ScalingPoint]:
    points = []
    for loss in losses:
        _warm_up(embedplug_step(loss, gather=False), loss, slice(0, 64), 64, dim)
        if peers and loss != "GISTEmbedLoss":
            _warm_up(peer_step(loss), loss, slice(0, 64), 64, dim)
        for n in sizes:
            implementations = {"embedplug fused": embedplug_step(loss, gather=False)}
            if peers and peer_fits(loss, n, dim):
                implementations[SENTENCE_TRANSFORMERS] = peer_step(loss)
            for name, step in implementations.items():
                seconds, peak = _measure(step, loss, slice(0, n), n, dim, repeats)
                points.append(ScalingPoint(loss, name, 1, n, dim, seconds, peak, 0))
                log(_line(points[-1]))
    return points


def _worker(rank: int, world_size: int, port: int, plan: dict, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(max(plan["threads"] // world_size, 1))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=1800),
    )
    results = []
    for loss in plan["losses"]:
        _warm_up(embedplug_step(loss, gather=True), loss, slice(rank * 32, (rank + 1) * 32), 64, plan["dim"])
        for n in plan["sizes"]:
            local = n // world_size
            rows = slice(rank * local, (rank + 1) * local)
            seconds, peak = _measure(
                embedplug_step(loss, gather=True), loss, rows, n, plan["dim"], plan["repeats"], barrier=dist.barrier
            )
            results.append((loss, n, seconds, peak))
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def two_processes(losses, sizes, dim: int, repeats: int, log=print, world_size: int = 2) -> list[ScalingPoint]:
    """The gathered losses in ``world_size`` gloo processes on 127.0.0.1 (global N split evenly)."""
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    plan = {"losses": list(losses), "sizes": list(sizes), "dim": dim, "repeats": repeats, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(world_size, port, plan, out_dir), nprocs=world_size, start_method="spawn")
        ranks = [json.loads((Path(out_dir) / f"rank{rank}.json").read_text()) for rank in range(world_size)]
    points = []
    for entries in zip(*ranks):
        loss, n = entries[0][0], entries[0][1]
        seconds = max(entry[2] for entry in entries)
        peaks = [entry[3] for entry in entries if entry[3] is not None]
        gathered = gathered_columns(loss) * n * dim * 4
        points.append(
            ScalingPoint(loss, "embedplug fused", world_size, n, dim, seconds, max(peaks) if peaks else None, gathered)
        )
        log(_line(points[-1]))
    return points


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def _line(point: ScalingPoint) -> str:
    beyond = "" if point.processes == 1 else f" ({_mib(point.beyond_gathered_bytes)} beyond the gathered embeddings)"
    return (
        f"  {point.loss:<32} {point.implementation:<26} {point.processes} proc N={point.n:>6} "
        f"{point.seconds * 1e3:10.1f} ms  peak +{_mib(point.peak_extra_bytes)}{beyond}"
    )


def markdown_table(points: list[ScalingPoint]) -> str:
    """One row per (loss, N): one-process time and memory, sentence-transformers', 2-process."""
    rows = [
        "| loss | N | 1 process | sentence-transformers (1 process) | 2 processes (per process; beyond gathered) |",
        "|---|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((p.loss, p.n) for p in points)
    for loss, n in keys:
        def cell(implementation: str, processes: int) -> str:
            found = [p for p in points if (p.loss, p.n, p.implementation, p.processes) == (loss, n, implementation, processes)]
            if not found:
                return "–"
            p = found[0]
            text = f"{p.seconds:.2f} s, {_mib(p.peak_extra_bytes)}"
            return text + (f"; {_mib(p.beyond_gathered_bytes)}" if processes > 1 else "")

        rows.append(
            f"| {loss} | {n} | {cell('embedplug fused', 1)} | {cell(SENTENCE_TRANSFORMERS, 1)} | {cell('embedplug fused', 2)} |"
        )
    return "\n".join(rows)


def write_json(points: list[ScalingPoint], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{**asdict(p), "beyond_gathered_bytes": p.beyond_gathered_bytes} for p in points], indent=2))


# One colour per series in every panel.
_COLORS = {("embedplug fused", 1): "tab:blue", ("embedplug fused", 2): "tab:green", (SENTENCE_TRANSFORMERS, 1): "tab:orange"}


def write_plot(points: list[ScalingPoint], path: Path) -> None:
    """Per loss: time and peak extra memory against N (log-log), 1 process, 2 processes, sentence-transformers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(dict.fromkeys(p.loss for p in points))
    figure, axes = plt.subplots(len(losses), 2, figsize=(11, 3.2 * len(losses)), squeeze=False)
    for row, loss in enumerate(losses):
        series = dict.fromkeys((p.implementation, p.processes) for p in points if p.loss == loss)
        for implementation, processes in series:
            selected = sorted(
                (p for p in points if (p.loss, p.implementation, p.processes) == (loss, implementation, processes)),
                key=lambda p: p.n,
            )
            label = f"{implementation}, {processes} proc"
            style = {"marker": "o", "label": label, "color": _COLORS.get((implementation, processes), "gray")}
            axes[row][0].plot([p.n for p in selected], [p.seconds for p in selected], **style)
            memory = [(p.n, p.peak_extra_bytes / 2**20) for p in selected if p.peak_extra_bytes]
            axes[row][1].plot([m[0] for m in memory], [m[1] for m in memory], **style)
        axes[row][0].set(xscale="log", yscale="log", xlabel="global N", ylabel="s (fwd+bwd)", title=f"{loss}: time")
        axes[row][1].set(xscale="log", yscale="log", xlabel="global N", ylabel="MiB per process", title=f"{loss}: peak extra memory")
        axes[row][0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def environment() -> dict:
    return {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__}
