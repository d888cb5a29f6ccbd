"""Peak extra resident memory of a call, from the kernel's high-water mark (Linux)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {_STATUS}")


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    # Blocks of 64 KiB and more get their own mapping and go back to the OS when freed; otherwise
    # an implementation measured after another would reuse the heap the first one left behind
    # and look free of cost.
    if hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    return libc


def _release_free_memory() -> None:
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def memory_measurable() -> bool:
    return _STATUS.exists() and _CLEAR_REFS.exists()


def peak_extra_memory_bytes(fn: Callable[[], object]) -> int | None:
    """Bytes by which resident memory peaked above its level before ``fn()``; None where unmeasurable.

    Writing 5 to /proc/self/clear_refs resets VmHWM, so the peak is that of this call alone.
    The allocator may serve part of the call from memory it already holds, so this is a lower
    bound of what the call allocates, and the same bound for every implementation compared.
    """
    if not memory_measurable():
        return None
    _release_free_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - before, 0) * 1024
