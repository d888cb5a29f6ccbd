"""Forward + backward of every fused loss at one size, for two checkouts of embedplug side by side.

    python benchmarks/compare_builds.py --checkout BASELINE_DIR --checkout CANDIDATE_DIR [--n 8192 --dim 384]

Each checkout must have its extension built in place. The checkouts are timed in alternation, one
subprocess per (checkout, round), so that machine noise falls on both alike; each subprocess also
times one ``torch.mm`` of [N, D] x [D, N] (the GEMM floor) on the same inputs. Prints, per loss, the
median time of each checkout, its ratio to the floor measured in the same process, and the
candidate/baseline ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# (name, functional-form expression); x: [N, D] leaf, y: P x K labels, a/p: the two halves for in-batch losses.
CASES = [
    ("BatchHardTripletLoss", "EF.batch_hard_triplet_loss(x, y, margin=5.0)"),
    ("BatchSemiHardTripletLoss", "EF.batch_semi_hard_triplet_loss(x, y, margin=5.0)"),
    ("BatchAllTripletLoss", "EF.batch_all_triplet_loss(x, y, margin=5.0)"),
    ("SupConLoss", "EF.supervised_contrastive_loss(x, y, temperature=0.1)"),
    ("MultiSimilarityLoss + miner", "EF.multi_similarity_loss(x, y, mining_epsilon=0.1)"),
    ("MultiSimilarityLoss, all pairs", "EF.multi_similarity_loss(x, y, mining_epsilon=None)"),
    ("CircleLoss", "EF.circle_loss(x, y)"),
    ("MultipleNegativesRankingLoss", "EF.multiple_negatives_ranking_loss(x[:h], x[h:])"),
    ("GISTEmbedLoss", "EF.gist_embed_loss(x[:h], x[h:], guide_anchor=g[:h], guide_positive=g[h:], margin=0.05)"),
]

WORKER = r"""
import json, statistics, sys, time, warnings
import torch
warnings.simplefilter("ignore")
import embedplug, embedplug.functional as EF
n, dim, repeats, names = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
cases = dict(json.loads(sys.argv[5]))
g = torch.Generator().manual_seed(0)
base = torch.randn(n, dim, generator=g)
y = torch.arange(n) // 4
h = n // 2
guide = torch.nn.functional.normalize(torch.randn(n, 64, generator=g), dim=1)

def timed(fn):
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)

out = {"floor": timed(lambda: torch.mm(base, base.t())), "embedplug": embedplug.__file__}
for name in names:
    expression = cases[name]
    def run():
        x = base.clone().requires_grad_()
        g = guide
        loss = eval(expression)
        loss.backward()
    out[name] = timed(run)
print(json.dumps(out))
"""


def run_round(checkout: Path, n: int, dim: int, repeats: int) -> dict:
    names = [name for name, _ in CASES]
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(n), str(dim), str(repeats), json.dumps(names), json.dumps(CASES)],
        cwd=checkout, capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", type=Path, required=True, help="baseline first, then candidate")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", default=None, metavar="LOSS", help="time only these losses (repeatable)")
    args = parser.parse_args()
    unknown = set(args.only or ()) - {name for name, _ in CASES}
    if unknown:
        parser.error(f"unknown loss(es) {sorted(unknown)}; choose from {[name for name, _ in CASES]}")
    if args.only:
        CASES[:] = [(name, expression) for name, expression in CASES if name in args.only]
    if len(args.checkout) != 2:
        parser.error("give exactly two --checkout folders: baseline, candidate")
    runs: dict[Path, list[dict]] = {checkout: [] for checkout in args.checkout}
    for _ in range(args.rounds):
        for checkout in args.checkout:
            runs[checkout].append(run_round(checkout, args.n, args.dim, args.repeats))
    print(f"N = {args.n}, D = {args.dim}, {args.rounds} alternating rounds x median of {args.repeats}")
    for checkout in args.checkout:
        print(f"  {checkout}: embedplug from {runs[checkout][0]['embedplug']}")
    print(f"{'loss':34s} {'baseline ms (x floor)':>24s} {'candidate ms (x floor)':>24s} {'candidate/baseline':>19s}")
    for name, _ in CASES:
        cells = []
        for checkout in args.checkout:
            times = [run[name] for run in runs[checkout]]
            ratios = [run[name] / run["floor"] for run in runs[checkout]]
            cells.append((statistics.median(times), statistics.median(ratios)))
        (b, bf), (c, cf) = cells
        print(f"{name:34s} {b * 1e3:14.0f} ({bf:5.2f}x) {c * 1e3:16.0f} ({cf:5.2f}x) {c / b:18.3f}")


if __name__ == "__main__":
    main()
