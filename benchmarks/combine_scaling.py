"""Merge ``embedplug bench --scaling`` JSON files into one table, JSON and plot (later files win per point).

    python benchmarks/combine_scaling.py docs/scaling RUN1/scaling.json RUN2/scaling.json ...

The study's large points run separately (once, late: they take minutes on 2 shared cores); this puts
them into docs/scaling/scaling.{json,png} next to the grid.
"""
import json, sys
from pathlib import Path
from embedplug.bench import scaling
points = []
for path in sys.argv[2:]:
    for row in json.loads(Path(path).read_text()):
        row.pop("beyond_gathered_bytes", None)
        points.append(scaling.ScalingPoint(**row))
# a later file's point replaces an earlier one for the same (loss, implementation, processes, n)
merged = {}
for p in points:
    merged[(p.loss, p.implementation, p.processes, p.n)] = p
points = list(merged.values())
out = Path(sys.argv[1])
scaling.write_json(points, out / "scaling.json")
scaling.write_plot(points, out / "scaling.png")
print(scaling.markdown_table(sorted(points, key=lambda p: (scaling.LOSS_NAMES.index(p.loss), p.n))))
