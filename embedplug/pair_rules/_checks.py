"""Field checks shared by the parts of a pair rule: each error names the part and the field."""

from __future__ import annotations

import math
import numbers


class PairRuleError(ValueError):
    """A pair rule that cannot be interpreted: the message starts with the part at fault
    (``"negatives.reduction: ..."``)."""


def real(part: str, value, *, positive: bool = False, non_zero: bool = False) -> float:
    """``value`` as a finite float (a bool is not a number here), or an error naming ``part``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{part} must be a real number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise PairRuleError(f"{part} must be a finite number, got {number}")
    if positive and not number > 0:
        raise PairRuleError(f"{part} must be > 0, got {number}")
    if non_zero and number == 0:
        raise PairRuleError(f"{part} must not be 0")
    return number


def flag(part: str, value) -> bool:
    """``value`` if it is a bool, else a TypeError naming ``part``."""
    if not isinstance(value, bool):
        raise TypeError(f"{part} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def choice(part: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (strings), else an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise PairRuleError(f"{part} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def instance(part: str, value, cls: type, *, optional: bool = False):
    """``value`` if it is a ``cls`` (or None when ``optional``), else a TypeError naming ``part``.

    A rule holds data only (numbers, names and these parts), never a callable: that is what lets a
    kernel interpret it.
    """
    if value is None and optional:
        return None
    if not isinstance(value, cls):
        expected = f"a {cls.__name__}" + (" or None" if optional else "")
        raise TypeError(f"{part} must be {expected}, got {value!r} ({type(value).__name__})")
    return value


def set_field(obj, name: str, value) -> None:
    """Stores a normalised value on a frozen dataclass during ``__post_init__``."""
    object.__setattr__(obj, name, value)
