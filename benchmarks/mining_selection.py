"""The selection stage of hard-negative mining against its GEMM floor, at dataset scale.

    python benchmarks/mining_selection.py --queries 20000 --corpus 200000 --dim 384 --k 3

Prints, from one run, three paths side by side on the same data:

* ``fused``: ``embedplug.mining.topk_hard_negatives`` through the op ``embedplug::hard_negative_topk``
  (GEMM tiles with the filters and the running top-k fused into the epilogue);
* ``reference``: the same call inside ``embedplug.ops.force_reference()``, the pure-torch streamed
  selection (topk per tile, merge, one pass per rule);
* ``floor``: the same Q x C x D products alone, ``torch.mm`` of the reference's tile shape (up to
  1024 x 4096) into one reused buffer with BLAS's own threads, no epilogue: the GEMM floor;
* ``floor@tiles``: the same products in the fused CPU kernel's tile shape (256 x 1024), one thread per
  share of query blocks as the kernel runs them: what the kernel's GEMMs alone cost, so that
  ``fused - floor@tiles`` is the epilogue and ``floor@tiles - floor`` the tile shape.

Each path runs in its own subprocess, so that its peak resident memory beyond the inputs
(``ru_maxrss`` after building the inputs vs after the run) is its own; times are wall clock of the
call, ratios are against the floor measured in the same run. Threads: torch's default unless
``--threads`` is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PATHS = ("floor", "floor@tiles", "fused", "reference")
# The fused CPU kernel's tile (csrc/cpu/hard_negative_topk_kernel.cpp): the floor runs the same GEMM shapes.
QUERY_BLOCK, CORPUS_TILE = 256, 1024


def _unit_rows(rows: int, dim: int, generator):
    """Random unit rows, made in place block by block: ru_maxrss is a high-water mark, so building the
    inputs must not peak above their own size, or it would hide what the selection adds."""
    import torch

    out = torch.empty(rows, dim)
    for block in out.split(16384):
        block.normal_(generator=generator)
        block.div_(block.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return out


def _inputs(args):
    import torch

    generator = torch.Generator().manual_seed(0)
    queries, corpus = _unit_rows(args.queries, args.dim, generator), _unit_rows(args.corpus, args.dim, generator)
    positives = torch.arange(args.queries) % args.corpus
    return queries, corpus, positives


def _floor(queries, corpus) -> None:
    """The reference's tiles (the whole problem when it fits 2^22 scores), BLAS-threaded."""
    import torch

    from embedplug.reference.hard_negative_topk import tile_shape

    num_queries, num_corpus = queries.shape[0], corpus.shape[0]
    rows, cols = tile_shape(num_queries, num_corpus)
    buffer = torch.empty(rows, cols)
    for row in range(0, num_queries, rows):
        for column in range(0, num_corpus, cols):
            out = buffer[: min(rows, num_queries - row), : min(cols, num_corpus - column)]
            torch.mm(queries[row : row + rows], corpus[column : column + cols].t(), out=out)


def _floor_at_kernel_tiles(queries, corpus) -> None:
    """Every (query block x corpus tile) GEMM of the fused kernel, into one reused buffer, in parallel
    over query blocks as the kernel runs them."""
    import torch

    num_queries, num_corpus = queries.shape[0], corpus.shape[0]
    blocks = range(0, num_queries, QUERY_BLOCK)

    def run(block_begin: int, block_end: int) -> None:
        buffer = torch.empty(QUERY_BLOCK, min(CORPUS_TILE, num_corpus))
        for row in list(blocks)[block_begin:block_end]:
            query_rows = queries[row : row + QUERY_BLOCK]
            for column in range(0, num_corpus, CORPUS_TILE):
                columns = corpus[column : column + CORPUS_TILE]
                out = buffer[: query_rows.shape[0], : columns.shape[0]]
                torch.mm(query_rows, columns.t(), out=out)

    threads = torch.get_num_threads()
    if threads == 1:
        run(0, len(blocks))
        return
    # Python threads release the GIL inside torch.mm; each runs a contiguous share of the blocks, as
    # at::parallel_for splits them, with one BLAS thread each.
    import threading

    torch.set_num_threads(1)
    share = -(-len(blocks) // threads)
    workers = [threading.Thread(target=run, args=(i * share, min((i + 1) * share, len(blocks)))) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    torch.set_num_threads(threads)


def measure(path: str, args) -> dict:
    """One path in this process: seconds and peak resident memory beyond the inputs (MiB)."""
    import torch

    import embedplug.ops
    from embedplug.mining import topk_hard_negatives

    if args.threads:
        torch.set_num_threads(args.threads)
    queries, corpus, positives = _inputs(args)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if path == "floor":
        _floor(queries, corpus)
    elif path == "floor@tiles":
        _floor_at_kernel_tiles(queries, corpus)
    else:
        options = dict(positives=positives, relative_margin=args.relative_margin)
        if path == "reference":
            with embedplug.ops.force_reference():
                topk_hard_negatives(queries, corpus, args.k, **options)
        else:
            topk_hard_negatives(queries, corpus, args.k, **options)
    seconds = time.perf_counter() - start
    extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    backend = embedplug.ops.backend(embedplug.ops.SPECS["hard_negative_topk"], "cpu")["implementation"]
    return {"path": path, "seconds": seconds, "extra_mib": extra_mib, "threads": torch.get_num_threads(),
            "op_backend": "reference" if path == "reference" else backend}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--corpus", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--relative-margin", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per path (0: torch's default)")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)  # one path, in a subprocess
    args = parser.parse_args()
    if args.path:
        print(json.dumps(measure(args.path, args)))
        return
    results = {}
    for path in PATHS:
        command = [sys.executable, __file__, *sys.argv[1:], "--path", path]
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            sys.exit(f"path {path} failed:\n{finished.stderr}")
        results[path] = json.loads(finished.stdout.strip().splitlines()[-1])
    floor = results["floor"]["seconds"]
    print(
        f"Q = {args.queries}, C = {args.corpus}, D = {args.dim}, k = {args.k}, relative_margin = "
        f"{args.relative_margin}, {results['floor']['threads']} thread(s); each path in its own process"
    )
    print(f"{'path':<12} {'seconds':>8} {'x floor':>8} {'extra MiB':>10}")
    for path in PATHS:
        result = results[path]
        label = path if path != "fused" or result["op_backend"] == "fused" else "fused (NOT BUILT: reference ran)"
        print(f"{label:<12} {result['seconds']:>8.2f} {result['seconds'] / floor:>8.2f} {result['extra_mib']:>10.0f}")


if __name__ == "__main__":
    main()
