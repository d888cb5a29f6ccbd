"""Which sentence-transformers release the drop-in losses follow, and how the releases differ.

embedplug's drop-ins give the numbers of the sentence-transformers the user has installed. The few
places where releases disagree are named switches in one table (:data:`SEMANTICS`); the losses and
functional forms read a switch (``current().gist_masks_own_similarity``), never a version number.

The installed release is read once, from the package metadata (no import of sentence-transformers,
which takes seconds). Without sentence-transformers the newest known semantics apply; a release
outside the table follows the nearest known one (reported as such by :func:`report`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

DISTRIBUTION = "sentence-transformers"


@dataclass(frozen=True)
class StSemantics:
    """The behaviour of one sentence-transformers release where embedplug's drop-ins depend on it.

    Attributes:
        version: the release, "major.minor".
        gist_masks_own_similarity: GISTEmbedLoss and CachedGISTEmbedLoss always drop each anchor's
            similarity to itself (anchor-anchor block) and each positive's to itself
            (positive-positive block) from the softmax (6.3: ``aa_sim[rows, rows] = -inf``); before,
            only the guide's false-negative rule dropped them, which it does not when the margin is
            negative or the guide rates the positive nearly perfect.
        cosine_distance_clamped: ``BatchHardTripletLossDistanceFunction.cosine_distance`` (the batch
            triplet family's cosine distance) is ``clamp(1 - cos, min=0)`` with an exactly zero,
            constant diagonal (6.3); before, ``1 - cos`` as computed, slightly negative for
            (near-)parallel rows and on the diagonal.
    """

    version: str
    gist_masks_own_similarity: bool
    cosine_distance_clamped: bool


SEMANTICS: dict[str, StSemantics] = {
    "6.2": StSemantics("6.2", gist_masks_own_similarity=False, cosine_distance_clamped=False),
    "6.3": StSemantics("6.3", gist_masks_own_similarity=True, cosine_distance_clamped=True),
}
NEWEST = "6.3"


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_version() -> str | None:
    """The installed sentence-transformers' version string (e.g. "6.3.0"), or None when absent."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def followed_release(installed: str | None) -> str:
    """The table entry ("6.2", "6.3") that an installed version follows: its own major.minor when
    known, the nearest known release otherwise, the newest when nothing is installed."""
    if installed is None:
        return NEWEST
    release = _major_minor(installed)
    if release is None:
        return NEWEST
    known = sorted(SEMANTICS, key=_major_minor)
    if f"{release[0]}.{release[1]}" in SEMANTICS:
        return f"{release[0]}.{release[1]}"
    if release < _major_minor(known[0]):
        return known[0]
    return known[-1]


def semantics_for(version: str | StSemantics | None) -> StSemantics:
    """The semantics of ``version`` ("6.2", "6.3", a full version such as "6.3.1", or an
    :class:`StSemantics`); None means the installed release's (:func:`current`).

    Raises ValueError naming the known releases for a version embedplug has no table entry for.
    """
    if version is None:
        return current()
    if isinstance(version, StSemantics):
        return version
    release = _major_minor(str(version))
    key = None if release is None else f"{release[0]}.{release[1]}"
    if key not in SEMANTICS:
        raise ValueError(
            f"no sentence-transformers semantics known for {version!r}; known releases: {', '.join(SEMANTICS)}"
        )
    return SEMANTICS[key]


INSTALLED = installed_version()
# Resolved at import, so that a traced (torch.compile) loss reads a constant.
_CURRENT = SEMANTICS[followed_release(INSTALLED)]


def current() -> StSemantics:
    """The semantics the drop-ins follow in this process: those of the installed release."""
    return _CURRENT


def loss_report() -> dict:
    """The field a drop-in loss's ``backend_info()`` adds: ``{"follows_sentence_transformers": "6.3"}``."""
    return {"follows_sentence_transformers": _CURRENT.version}


def report() -> dict:
    """What ``backend_info()`` and ``embedplug doctor`` say about it: ``{"follows": "6.3",
    "installed": "6.3.0" or None, "exact": whether the installed release is in the table}``."""
    installed_release = None if INSTALLED is None else _major_minor(INSTALLED)
    exact = installed_release is not None and f"{installed_release[0]}.{installed_release[1]}" in SEMANTICS
    return {"follows": _CURRENT.version, "installed": INSTALLED, "exact": exact}
