"""Timing one benchmark case long enough to be stable: repeat until a minimum measured time, then report
the median and the spread of the samples.

A sample is the mean of ``loops`` back-to-back calls, ``loops`` chosen so that one sample lasts at least
:data:`SAMPLE_SECONDS` (a 0.1 ms ``torch.mm`` timed alone is mostly timer and scheduler noise). Samples are
taken until there are ``repeats`` of them and they add up to ``min_seconds``; a case measured for less
than :data:`STABLE_SECONDS` in all (a smoke run's ``--min-time``, or the sample cap) is flagged unstable.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

SAMPLE_SECONDS = 0.005
STABLE_SECONDS = 0.5
MAX_SAMPLES = 1000
_MAX_LOOPS = 1 << 16


@dataclass(frozen=True)
class Timing:
    """One case's time per call: ``median`` and the interquartile range ``q1``..``q3`` of the samples (s)."""

    median: float
    q1: float
    q3: float
    samples: int
    loops: int  # calls per sample
    measured_seconds: float  # all samples together

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median (0.05: the middle half within about ±5%)."""
        return (self.q3 - self.q1) / (2 * self.median) if self.median > 0 else 0.0

    @property
    def stable(self) -> bool:
        """Whether the case was measured for at least :data:`STABLE_SECONDS`."""
        return self.measured_seconds >= STABLE_SECONDS


def _seconds(call: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        call()
    return time.perf_counter() - start


def calls_per_sample(call: Callable[[], object]) -> tuple[int, float]:
    """How many back-to-back calls make one sample last at least :data:`SAMPLE_SECONDS`, and how long
    the last calibration run of that many calls took (a sample already, for slow calls)."""
    loops = 1
    while True:
        elapsed = _seconds(call, loops)
        if elapsed >= SAMPLE_SECONDS or loops >= _MAX_LOOPS:
            return loops, elapsed
        # Aim past the target from the measured rate (at least doubling, at most x100 per step).
        target = int(loops * SAMPLE_SECONDS * 1.2 / max(elapsed, 1e-9))
        loops = min(_MAX_LOOPS, max(loops * 2, min(loops * 100, target)))


def time_call(call: Callable[[], object], repeats: int = 3, min_seconds: float = STABLE_SECONDS) -> Timing:
    """Time ``call`` (already warmed up): at least ``repeats`` samples and ``min_seconds`` in all."""
    loops, first = calls_per_sample(call)
    samples = [first / loops]
    measured = first
    while (len(samples) < max(repeats, 1) or measured < min_seconds) and len(samples) < MAX_SAMPLES:
        elapsed = _seconds(call, loops)
        measured += elapsed
        samples.append(elapsed / loops)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return Timing(statistics.median(samples), q1, q3, len(samples), loops, measured)
