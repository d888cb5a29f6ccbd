"""``embedplug bench``: the headline benchmark cases against the peers, in one run."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedplug.bench.timing import STABLE_SECONDS


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the fused losses against sentence-transformers and pytorch-metric-learning",
        description=(
            "Runs BatchHardTripletLoss forward+backward in every available implementation on the same "
            "inputs, in this process, with one torch.mm (the GEMM floor) for scale. Each case is repeated until "
            "it has been measured for --min-time seconds; the table gives the median time, its spread, the time "
            "as a multiple of the GEMM floor's and of embedplug fused's, and peak extra memory. Writes JSON, and "
            "a PNG plot when matplotlib is installed (pip install 'embedplug[plot]')."
        ),
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="batch sizes N")
    parser.add_argument("--dims", type=int, nargs="+", default=[384], help="embedding dimensions D")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="at least this many timed samples per case (median reported); --scaling: runs per point, 0 times the "
        "memory run",
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=STABLE_SECONDS,
        metavar="SECONDS",
        help=f"measure each case for at least this long in all (default {STABLE_SECONDS:g}; below it the table "
        "marks the case as not stable)",
    )
    parser.add_argument(
        "--implementations", nargs="+", default=None, help="subset of implementations (the GEMM floor always runs)"
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib plot")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="the scaling study instead: every fused loss as N doubles, in 1 and 2 processes (gathered), next to "
        "sentence-transformers where it fits in 4 GiB; writes scaling.json and scaling.png",
    )
    parser.add_argument("--losses", nargs="+", default=None, help="--scaling: subset of the losses")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="--scaling: 1 and/or 2 processes"
    )
    parser.add_argument("--no-peers", action="store_true", help="--scaling: skip sentence-transformers")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from embedplug.bench import runner

    if args.repeats < (0 if args.scaling else 1) or any(n < 1 for n in args.sizes) or any(d < 1 for d in args.dims):
        raise SystemExit("embedplug bench: --sizes, --dims and --repeats must be positive")
    if not args.min_time >= 0:
        raise SystemExit("embedplug bench: --min-time must be a number of seconds >= 0")
    if args.scaling:
        return run_scaling(args)
    print(f"embedplug bench: {runner.describe_environment(runner.environment())}")
    results = runner.run(
        args.sizes, args.dims, repeats=args.repeats, implementations=args.implementations, min_seconds=args.min_time
    )
    print()
    print(runner.markdown_table(results))
    runner.write_json(results, args.output / "bench.json")
    print(f"\nwrote {args.output / 'bench.json'}")
    if not args.no_plot:
        plot(runner.write_plot, results, args.output / "bench.png")
    return 0


def plot(write_plot, results, path: Path) -> None:
    """``write_plot(results, path)`` when matplotlib is installed; otherwise one line saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"no plot {path.name}: matplotlib is not installed (pip install 'embedplug[plot]' adds it)")
        return
    write_plot(results, path)
    print(f"wrote {path}")


def run_scaling(args: argparse.Namespace) -> int:
    from embedplug.bench import scaling

    losses = args.losses or list(scaling.LOSS_NAMES)
    unknown = set(losses) - set(scaling.LOSS_NAMES)
    if unknown:
        raise SystemExit(f"embedplug bench: unknown --losses {sorted(unknown)}; choose from {list(scaling.LOSS_NAMES)}")
    if any(n % 2 for n in args.sizes) and 2 in args.processes:
        raise SystemExit("embedplug bench: --sizes must be even to split over 2 processes")
    environment = ", ".join(f"{key} {value}" for key, value in scaling.environment().items())
    print(f"embedplug bench --scaling: {environment}")
    points = []
    for dim in args.dims:
        if 1 in args.processes:
            points += scaling.one_process(losses, args.sizes, dim, args.repeats, peers=not args.no_peers)
        if 2 in args.processes:
            points += scaling.two_processes(losses, args.sizes, dim, args.repeats)
    print()
    print(scaling.markdown_table(points))
    scaling.write_json(points, args.output / "scaling.json")
    print(f"\nwrote {args.output / 'scaling.json'}")
    if not args.no_plot:
        plot(scaling.write_plot, points, args.output / "scaling.png")
    return 0
