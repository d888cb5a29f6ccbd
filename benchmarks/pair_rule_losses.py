"""Pair-rule losses forward+backward, side by side in one run.

1. The new rules (pytorch-metric-learning's ContrastiveLoss, NTXentLoss, GeneralizedLiftedStructureLoss,
   TupletMarginLoss, and the example plugin's LiftedStructureLoss) on the fused kernel, against one
   ``torch.mm`` of the embeddings (the GEMM floor) and pytorch-metric-learning 2.9 itself.
2. The presets of SupCon, MultiSimilarity (with and without its miner) and Circle on the pair-rule
   kernel against embedplug's bespoke kernels of those losses.
3. With ``--memory-n``: each new rule's fused forward+backward at that N (time and peak extra memory);
   pytorch-metric-learning is not run there, its N x N float matrices are reported instead.

Each implementation's rounds alternate with the others' (A B C A B C ...), and the median is
reported, so a slow moment of the machine hits every column alike. Peak memory is the resident
high-water mark above the inputs (embedplug.bench.memory), one call each.

    python benchmarks/pair_rule_losses.py                       # N = 8192, D = 384
    python benchmarks/pair_rule_losses.py --memory-n 65536      # also the 1 GiB check at N = 65,536
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from embedplug.bench.batch_hard_cases import make_inputs
from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.functional import circle_loss, multi_similarity_loss, pair_rule_loss, supervised_contrastive_loss
from embedplug.pair_rules import Affine, PairRule, Reducer, Side, VersusLse, presets


def lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0) -> PairRule:
    """The example plugin's rule (plugins/embedplug-example), repeated so this script needs no install."""
    return PairRule(
        positives=Side(
            "euclidean",
            affine=Affine(-1.0, pos_margin),
            term=VersusLse("negatives", rows="anchor_and_positive", outer="squared_hinge_half"),
            reduction="pairs",
        ),
        negatives=Side("euclidean", affine=Affine(-1.0, neg_margin)),
        reducer=Reducer("mean", over="positive_pairs"),
        zero_without_both_pair_kinds=True,
    )


def _pml():
    try:
        from pytorch_metric_learning import losses, miners
    except ImportError:
        return None
    return losses, miners


def new_rules():
    """name -> (rule, PML loss factory or None)."""
    pml = _pml()
    peer = (lambda make: make) if pml else (lambda make: None)
    losses = pml[0] if pml else None
    return {
        "ContrastiveLoss": (presets.contrastive(), peer(lambda: losses.ContrastiveLoss())),
        "NTXentLoss": (presets.ntxent(), peer(lambda: losses.NTXentLoss())),
        "GeneralizedLiftedStructureLoss": (
            presets.generalized_lifted_structure(),
            peer(lambda: losses.GeneralizedLiftedStructureLoss()),
        ),
        "TupletMarginLoss": (presets.tuplet_margin(), peer(lambda: losses.TupletMarginLoss())),
        "LiftedStructureLoss (example plugin)": (lifted_structure(), peer(lambda: losses.LiftedStructureLoss())),
    }


def presets_against_bespoke():
    """name -> (preset rule, bespoke functional loss)."""
    return {
        "SupConLoss": (presets.supcon(0.1), lambda x, y: supervised_contrastive_loss(x, y, temperature=0.1)),
        "MultiSimilarityLoss (+ miner)": (
            presets.multi_similarity(mining_epsilon=0.1),
            lambda x, y: multi_similarity_loss(x, y, mining_epsilon=0.1),
        ),
        "MultiSimilarityLoss (all pairs)": (
            presets.multi_similarity(mining_epsilon=None),
            lambda x, y: multi_similarity_loss(x, y, mining_epsilon=None),
        ),
        "CircleLoss": (presets.circle(), lambda x, y: circle_loss(x, y)),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-n", type=int, default=None)
    parser.add_argument("--skip", choices=["new", "presets"], action="append", default=[])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.n}, D = {args.dim}, P x K with K = 4")
    inputs = make_inputs(args.n, args.dim)

    if "new" not in args.skip:
        print("\n| loss | embedplug fused | x torch.mm | peak extra | pytorch-metric-learning 2.9 | x torch.mm | peak extra |")
        print("|---|---|---|---|---|---|---|")
        for name, (rule, make_peer) in new_rules().items():
            functions = {"floor": floor, "fused": lambda i, rule=rule: forward_backward(lambda x, y: pair_rule_loss(x, y, rule), i)}
            if make_peer is not None:
                peer = make_peer()
                functions["pml"] = lambda i, peer=peer: forward_backward(peer, i)
            medians = interleaved_medians(functions, inputs, args.rounds)
            memory = {key: peak_extra_memory_bytes(lambda fn=fn: fn(inputs)) for key, fn in functions.items() if key != "floor"}
            pml_cells = (
                f"{medians['pml']:.2f} s | {medians['pml'] / medians['floor']:.2f} | {mib(memory['pml'])}"
                if "pml" in medians
                else "not installed | | "
            )
            print(
                f"| {name} | {medians['fused']:.2f} s | {medians['fused'] / medians['floor']:.2f} | {mib(memory['fused'])} "
                f"| {pml_cells} |"
            )
        print(f"(torch.mm floor: {medians['floor']:.3f} s)")

    if "presets" not in args.skip:
        print("\n| loss | bespoke kernel | pair-rule preset | preset / bespoke |")
        print("|---|---|---|---|")
        for name, (rule, bespoke) in presets_against_bespoke().items():
            functions = {
                "bespoke": lambda i, bespoke=bespoke: forward_backward(bespoke, i),
                "preset": lambda i, rule=rule: forward_backward(lambda x, y: pair_rule_loss(x, y, rule), i),
            }
            medians = interleaved_medians(functions, inputs, args.rounds)
            print(f"| {name} | {medians['bespoke']:.2f} s | {medians['preset']:.2f} s | {medians['preset'] / medians['bespoke']:.2f} |")

    if args.memory_n:
        n = args.memory_n
        big = make_inputs(n, args.dim)
        element = big.embeddings.element_size()
        print(f"\nN = {n}, D = {args.dim}: fused forward+backward, one call each "
              f"(pytorch-metric-learning would hold N x N matrices of {n * n * element / 2**30:.0f} GiB each)")
        print("| loss | time | peak extra memory |")
        print("|---|---|---|")
        for name, (rule, _) in new_rules().items():
            start = time.perf_counter()
            peak = peak_extra_memory_bytes(lambda rule=rule: forward_backward(lambda x, y: pair_rule_loss(x, y, rule), big))
            print(f"| {name} | {time.perf_counter() - start:.0f} s | {mib(peak)} |")


if __name__ == "__main__":
    main()
