"""How the benchmarks name the peers they measure: by the version installed here, as the rows' label."""

from __future__ import annotations

import importlib.metadata


def installed_label(distribution: str) -> str:
    """``"<distribution> <installed version>"``, or ``"<distribution>"`` when it is not installed."""
    try:
        return f"{distribution} {importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return distribution


# The sentence-transformers rows of every benchmark table, plot and JSON: "sentence-transformers 6.2.0".
SENTENCE_TRANSFORMERS = installed_label("sentence-transformers")
