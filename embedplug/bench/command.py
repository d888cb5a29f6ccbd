"""``embedplug bench``: the headline benchmark cases against the peers, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the fused losses against sentence-transformers and pytorch-metric-learning",
        description=(
            "Runs BatchHardTripletLoss forward+backward in every available implementation on the same "
            "inputs, in this process, with one torch.mm (the GEMM floor) for scale; prints a table of "
            "times, ratios and peak extra memory, and writes JSON and a PNG plot."
        ),
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="batch sizes N")
    parser.add_argument("--dims", type=int, nargs="+", default=[384], help="embedding dimensions D")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument(
        "--implementations", nargs="+", default=None, help="subset of implementations (the GEMM floor always runs)"
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from embedplug.bench import runner

    if args.repeats < 1 or any(n < 1 for n in args.sizes) or any(d < 1 for d in args.dims):
        raise SystemExit("embedplug bench: --sizes, --dims and --repeats must be positive")
    print(f"embedplug bench: {runner.environment()}")
    results = runner.run(args.sizes, args.dims, repeats=args.repeats, implementations=args.implementations)
    print()
    print(runner.markdown_table(results))
    runner.write_json(results, args.output / "bench.json")
    print(f"\nwrote {args.output / 'bench.json'}")
    if not args.no_plot:
        runner.write_plot(results, args.output / "bench.png")
        print(f"wrote {args.output / 'bench.png'}")
    return 0
