"""Which sentence-transformers ``mine_hard_negatives`` to mirror: its behaviour changed in 6.3.

6.3 (vs 6.2): the query's own text is never its own negative (one more raw candidate is retrieved
to make room for it), a ``cross_encoder`` rescores even without score filters, and ``min_score``
no longer counts candidates that an earlier rule had already removed (embedplug counts that way in
both). Everything else, including the output of every format, is the same.
"""

from __future__ import annotations

import dataclasses
import re

SUPPORTED = ("6.2", "6.3")


@dataclasses.dataclass(frozen=True)
class STBehaviour:
    version: str
    excludes_query_text: bool  # 6.3: a corpus row equal to the query is dropped (and gets a window slot)
    cross_encoder_always_rescores: bool  # 6.2 rescored only when a score filter was set

    @property
    def extra_window_slots(self) -> int:
        return 1 if self.excludes_query_text else 0


def installed_version() -> str:
    import sentence_transformers

    return sentence_transformers.__version__


def behaviour_for(version: str | None = None) -> STBehaviour:
    """The behaviour of sentence-transformers ``version`` (default: the installed one).

    Versions before 6.2 behave as 6.2 here; later ones as 6.3 (the newest this mirrors).
    """
    version = version or installed_version()
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"cannot read a sentence-transformers version from {version!r}; expected e.g. '6.3'")
    major_minor = (int(match.group(1)), int(match.group(2)))
    newer = major_minor >= (6, 3)
    return STBehaviour(version=version, excludes_query_text=newer, cross_encoder_always_rescores=newer)
