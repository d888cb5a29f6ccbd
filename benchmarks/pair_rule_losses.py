"""Pair-rule losses forward+backward, side by side in one run.

1. The new rules (pytorch-metric-learning's ContrastiveLoss, NTXentLoss, GeneralizedLiftedStructureLoss,
   TupletMarginLoss, and the example plugin's LiftedStructureLoss) on the fused kernel at N (default
   8192), against one ``torch.mm`` of the embeddings (the GEMM floor) and pytorch-metric-learning 2.9.
   PML's NTXent, TupletMargin and LiftedStructure build a [positive pairs x negative pairs] matrix
   (N^2 (K - 1)(N - K) entries: terabytes at N = 8192); they are reported as not run there, with the
   memory they would need, and compared at ``--pml-n`` (default 512) instead.
2. With ``--memory-n``: each new rule's fused forward+backward at that N (time and peak extra memory).

The presets of SupCon, MultiSimilarity and Circle replaced bespoke kernels; that comparison needs the
old build beside the new one: ``benchmarks/compare_builds.py --checkout OLD --checkout NEW --only SupConLoss ...``.

Implementations alternate round by round (A B C A B C ...) and the median is reported, so a slow
moment of the machine hits every column alike. Peak memory is the resident high-water mark above the
inputs (embedplug.bench.memory), one call each.

    python benchmarks/pair_rule_losses.py                       # N = 8192, D = 384
    python benchmarks/pair_rule_losses.py --memory-n 65536      # also the 1 GiB check at N = 65,536
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from embedplug.bench.batch_hard_cases import make_inputs
from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.functional import pair_rule_loss
from embedplug.pair_rules import PairRule, presets


def lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0) -> PairRule:
    """The example plugin's rule, loaded from its source file (the script needs no install)."""
    source = Path(__file__).resolve().parents[1] / "plugins" / "embedplug-example" / "src" / "embedplug_example"
    spec = importlib.util.spec_from_file_location("_example_lifted_structure", source / "lifted_structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lifted_structure(neg_margin, pos_margin)


def new_rules() -> dict:
    """name -> (rule, PML loss factory or None, whether PML builds a positive-by-negative pairs matrix)."""
    try:
        from pytorch_metric_learning import losses
    except ImportError:
        losses = None

    def peer(name):
        return None if losses is None else getattr(losses, name)

    return {
        "ContrastiveLoss": (presets.contrastive(), peer("ContrastiveLoss"), False),
        "NTXentLoss": (presets.ntxent(), peer("NTXentLoss"), True),
        "GeneralizedLiftedStructureLoss": (presets.generalized_lifted_structure(), peer("GeneralizedLiftedStructureLoss"), False),
        "TupletMarginLoss": (presets.tuplet_margin(), peer("TupletMarginLoss"), True),
        "LiftedStructureLoss (example plugin)": (lifted_structure(), peer("LiftedStructureLoss"), True),
    }


def pair_matrix_bytes(n: int, samples_per_class: int = 4, element: int = 4) -> int:
    """One [positive pairs x negative pairs] float matrix of a P x K batch."""
    return n * (samples_per_class - 1) * n * (n - samples_per_class) * element


def forward_backward(loss_fn, inputs) -> None:
    inputs.embeddings.grad = None
    loss_fn(inputs.embeddings, inputs.labels).backward()


def floor(inputs) -> None:
    with torch.no_grad():
        torch.mm(inputs.embeddings, inputs.embeddings.t())


def interleaved_medians(functions: dict, inputs, rounds: int) -> dict:
    """Median seconds of each function over ``rounds`` interleaved rounds, after one warm-up each."""
    for fn in functions.values():
        fn(inputs)
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn(inputs)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def compare(rules: dict, inputs, rounds: int, why_not_pml) -> None:
    """One table row per rule: fused and (where ``why_not_pml`` returns None) PML, beside one torch.mm."""
    print("| loss | embedplug fused | × torch.mm | peak extra | pytorch-metric-learning 2.9 | × torch.mm | peak extra |")
    print("|---|---|---|---|---|---|---|")
    floor_times = []
    for name, (rule, pml_class, pair_matrix) in rules.items():
        functions = {"floor": floor, "fused": lambda i, rule=rule: forward_backward(lambda x, y: pair_rule_loss(x, y, rule), i)}
        skipped = "not installed" if pml_class is None else why_not_pml(pair_matrix)
        if skipped is None:
            peer = pml_class()
            functions["pml"] = lambda i, peer=peer: forward_backward(peer, i)
        medians = interleaved_medians(functions, inputs, rounds)
        memory = {key: peak_extra_memory_bytes(lambda fn=fn: fn(inputs)) for key, fn in functions.items() if key != "floor"}
        floor_times.append(medians["floor"])
        pml_cells = (
            f"{medians['pml']:.2f} s | {medians['pml'] / medians['floor']:.1f} | {mib(memory['pml'])}"
            if "pml" in medians
            else f"{skipped} | | "
        )
        print(f"| {name} | {medians['fused']:.3f} s | {medians['fused'] / medians['floor']:.2f} | {mib(memory['fused'])} "
              f"| {pml_cells} |")
    print(f"(torch.mm floor: median {statistics.median(floor_times) * 1e3:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--pml-n", type=int, default=512)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-n", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, P x K labels with K = 4")
    rules = new_rules()

    print(f"\nN = {args.n}")
    compare(rules, make_inputs(args.n, args.dim), args.rounds,
            lambda pair_matrix: f"not run: its pairs matrix alone is {pair_matrix_bytes(args.n) / 2**40:,.1f} TiB"
            if pair_matrix else None)

    small = {name: entry for name, entry in rules.items() if entry[2]}
    print(f"\nN = {args.pml_n}: the losses whose PML implementation builds the pairs matrix "
          f"({pair_matrix_bytes(args.pml_n) / 2**30:.1f} GiB each at this N)")
    compare(small, make_inputs(args.pml_n, args.dim), args.rounds, lambda pair_matrix: None)

    if args.memory_n:
        n = args.memory_n
        big = make_inputs(n, args.dim)
        print(f"\nN = {n}, D = {args.dim}: fused forward+backward, one call each "
              f"(PML's N x N float matrices alone would be {n * n * 4 / 2**30:.0f} GiB each)")
        print("| loss | time | peak extra memory |")
        print("|---|---|---|")
        for name, (rule, _, _) in rules.items():
            start = time.perf_counter()
            peak = peak_extra_memory_bytes(lambda rule=rule: forward_backward(lambda x, y: pair_rule_loss(x, y, rule), big))
            print(f"| {name} | {time.perf_counter() - start:.0f} s | {mib(peak)} |")


if __name__ == "__main__":
    main()
