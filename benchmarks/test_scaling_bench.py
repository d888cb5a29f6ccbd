"""The scaling study (``embedplug bench --scaling``) as part of ``make bench``: every fused loss as the
global N doubles, in 1 process and in 2 gloo processes (gathered), next to sentence-transformers where
it fits in 4 GiB. Sizes from ``EMBEDPLUG_SCALING_SIZES`` (default "1024 2048 4096"); writes
bench-results/scaling.{json,png} and prints the table.

    pytest benchmarks/test_scaling_bench.py --benchmark-enable --benchmark-only -s
"""

from __future__ import annotations

import os
from pathlib import Path

from embedplug.bench import scaling

SIZES = [int(n) for n in os.environ.get("EMBEDPLUG_SCALING_SIZES", "1024 2048 4096").split()]


def test_scaling_study(benchmark):
    def study():
        return scaling.one_process(scaling.LOSS_NAMES, SIZES, 384, repeats=1) + scaling.two_processes(
            scaling.LOSS_NAMES, SIZES, 384, repeats=1
        )

    points = benchmark.pedantic(study, rounds=1, iterations=1)
    output = Path("bench-results")
    scaling.write_json(points, output / "scaling.json")
    scaling.write_plot(points, output / "scaling.png")
    print("\n" + scaling.markdown_table(points))
    assert {p.processes for p in points} == {1, 2}
