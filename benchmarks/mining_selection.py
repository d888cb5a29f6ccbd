"""The selection stage of hard-negative mining against its GEMM floor, at dataset scale.

    python benchmarks/mining_selection.py --queries 20000 --corpus 200000 --dim 384 --k 3

Times ``embedplug.mining.topk_hard_negatives`` (exact, streamed over corpus tiles, with a relative
margin against each query's positive) next to the GEMM floor: the same tiles' ``torch.mm`` into one
reused buffer, with no epilogue, in the same process. Also prints the peak resident memory the
selection added beyond the inputs (``ru_maxrss``, so measure one size per process).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from embedplug.mining import topk_hard_negatives
from embedplug.reference.hard_negative_topk import tile_shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--corpus", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    args = parser.parse_args()
    q, c = args.queries, args.corpus
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(q, args.dim, generator=generator), dim=1)
    corpus = torch.nn.functional.normalize(torch.randn(c, args.dim, generator=generator), dim=1)
    positives = torch.arange(q) % c
    rows, cols = tile_shape(q, c)
    buffer = torch.empty(rows, cols)

    start = time.perf_counter()
    for row in range(0, q, rows):
        for column in range(0, c, cols):
            out = buffer[: min(rows, q - row), : min(cols, c - column)]
            torch.mm(queries[row : row + rows], corpus[column : column + cols].t(), out=out)
    floor = time.perf_counter() - start

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    topk_hard_negatives(queries, corpus, args.k, positives=positives, relative_margin=args.relative_margin)
    selection = time.perf_counter() - start
    extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(
        f"Q = {q}, C = {c}, D = {args.dim}, k = {args.k}, tiles {rows} x {cols}: GEMM floor {floor:.1f} s, "
        f"selection {selection:.1f} s ({selection / floor:.2f}x the floor), peak memory beyond the inputs "
        f"{extra_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
