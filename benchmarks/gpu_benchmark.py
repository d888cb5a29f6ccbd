"""GPU benchmark: each fused loss's forward+backward on CUDA against sentence-transformers and one cuBLAS GEMM.

    python benchmarks/gpu_benchmark.py [--sizes 8192 32768] [--dim 768] [--json OUT.json] [--budget-s 240]

For every loss and N it reports the median time of forward+backward, the peak extra CUDA memory
(``torch.cuda.max_memory_allocated`` above the inputs), and the ratios against one
``torch.mm(E, E.T)`` of the same embeddings and against sentence-transformers measured in the same
run. sentence-transformers' batch-all and semi-hard losses build N x N x N tensors; where that
cannot fit on the device they are reported as skipped with the memory they would need, not run.
Implementations share the bench cases in ``embedplug/bench`` with the CPU benchmarks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from embedplug.bench import batch_hard_cases, batch_mining_cases, in_batch_negatives_cases
from embedplug.bench.peers import SENTENCE_TRANSFORMERS

ST = SENTENCE_TRANSFORMERS
FUSED = "embedplug fused"
# Losses whose sentence-transformers implementation materialises [N, N, N] float32 tensors (3 at once).
CUBIC_ST_LOSSES = {"BatchAllTripletLoss", "BatchSemiHardTripletLoss"}


def _labelled_cases() -> dict[str, dict[str, Callable]]:
    cases = {
        "BatchHardTripletLoss": {
            FUSED: batch_hard_cases.embedplug_fused,
            ST: batch_hard_cases.sentence_transformers,
        }
    }
    for loss, implementations in batch_mining_cases.LOSSES.items():
        cases[loss] = {name: implementations[name] for name in (FUSED, ST)}
    return cases


def _in_batch_cases() -> dict[str, dict[str, Callable]]:
    return {
        "GISTEmbedLoss": {name: in_batch_negatives_cases.GIST_IMPLEMENTATIONS[name] for name in (FUSED, ST)},
        "MultipleNegativesRankingLoss": {
            name: in_batch_negatives_cases.MNRL_IMPLEMENTATIONS[name] for name in (FUSED, ST)
        },
    }


def _labelled_inputs(n: int, dim: int) -> batch_hard_cases.Inputs:
    cpu = batch_hard_cases.make_inputs(n, dim)
    return batch_hard_cases.Inputs(cpu.embeddings.detach().cuda().requires_grad_(), cpu.labels.cuda())


def _in_batch_inputs(n: int, dim: int) -> in_batch_negatives_cases.Inputs:
    cpu = in_batch_negatives_cases.make_inputs(n, dim)
    return in_batch_negatives_cases.Inputs(
        cpu.anchor.detach().cuda().requires_grad_(),
        cpu.positive.detach().cuda().requires_grad_(),
        cpu.guide_anchor.cuda(),
        cpu.guide_positive.cuda(),
    )


def measure(fn: Callable[[], None], repeats: int) -> dict:
    """Median seconds over ``repeats`` calls after one warm-up, and the warm-up's peak extra memory."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_extra_bytes": int(peak)}


def _run_one(fn: Callable[[], None], repeats: int) -> dict:
    try:
        return measure(fn, repeats)
    except torch.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return {"skipped": f"CUDA out of memory: {str(error).splitlines()[0]}"}
    except Exception as error:  # a peer's version without this API, say: recorded, not fatal
        torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {error}"}


def run(sizes: list[int], dim: int, repeats: int, budget_s: float) -> dict:
    started = time.perf_counter()
    free_bytes, total_bytes = torch.cuda.mem_get_info()
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dim": dim,
        "dtype": "float32",
        "rows": [],
    }
    try:
        import sentence_transformers

        results["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        results["sentence_transformers"] = None
    for n in sizes:
        labelled = _labelled_inputs(n, dim)
        in_batch = _in_batch_inputs(n, dim)
        gemm = _run_one(lambda: torch.mm(labelled.embeddings.detach(), labelled.embeddings.detach().t()), repeats)
        groups = [(_labelled_cases(), labelled), (_in_batch_cases(), in_batch)]
        for cases, inputs in groups:
            for loss, implementations in cases.items():
                row = {"loss": loss, "n": n, "gemm": gemm}
                for name, fn in implementations.items():
                    if time.perf_counter() - started > budget_s:
                        row[name] = {"skipped": f"time budget of {budget_s:.0f} s spent"}
                        continue
                    cubic_bytes = 3 * 4 * n**3
                    if name == ST and results["sentence_transformers"] is None:
                        row[name] = {"skipped": "sentence-transformers not installed"}
                    elif name == ST and loss in CUBIC_ST_LOSSES and cubic_bytes > 0.8 * free_bytes:
                        row[name] = {"skipped": f"needs ~{cubic_bytes / 2**30:,.0f} GiB ([N, N, N] float32 x 3)"}
                    else:
                        row[name] = _run_one(lambda fn=fn, inputs=inputs: fn(inputs), repeats if name == FUSED else 2)
                fused, peer = row.get(FUSED, {}), row.get(ST, {})
                if "median_s" in fused and "median_s" in gemm:
                    row["fused_over_gemm"] = fused["median_s"] / gemm["median_s"]
                if "median_s" in fused and "median_s" in peer:
                    row["st_over_fused"] = peer["median_s"] / fused["median_s"]
                    row["st_memory_over_fused"] = peer["peak_extra_bytes"] / max(fused["peak_extra_bytes"], 1)
                results["rows"].append(row)
                print(format_row(row), flush=True)
        del labelled, in_batch
    results["total_memory_bytes"] = total_bytes
    results["wall_s"] = time.perf_counter() - started
    return results


def _cell(result: dict) -> str:
    if "median_s" in result:
        return f"{result['median_s'] * 1e3:9.1f} ms {result['peak_extra_bytes'] / 2**20:9.0f} MiB"
    return (result.get("skipped") or result.get("error") or "")[:60]


def format_row(row: dict) -> str:
    ratios = []
    if "fused_over_gemm" in row:
        ratios.append(f"fused/gemm {row['fused_over_gemm']:.2f}x")
    if "st_over_fused" in row:
        ratios.append(f"ST/fused {row['st_over_fused']:.1f}x time, {row['st_memory_over_fused']:.1f}x memory")
    return (
        f"{row['loss']:28} N={row['n']:6}  gemm {_cell(row['gemm'])} | fused {_cell(row.get(FUSED, {}))}"
        f" | ST {_cell(row.get(ST, {}))} | {'; '.join(ratios)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting new measurements after this")
    parser.add_argument("--json", help="write the results here")
    arguments = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_benchmark: no CUDA device", file=sys.stderr)
        return 2
    results = run(arguments.sizes, arguments.dim, arguments.repeats, arguments.budget_s)
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
