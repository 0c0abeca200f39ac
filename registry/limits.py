"""Bounds checked before allocating: image sizes, K, and memory a piece of work needs (torch-free).

Files and arguments are untrusted, so their sizes are checked before anything is built
from them. ``check_memory`` refuses work whose estimated memory exceeds what this process
can get (the machine's available memory, or a lower RLIMIT_AS / RLIMIT_DATA); setting
``DENSREG_IGNORE_MEMORY_LIMIT=1`` (``densreg --ignore-memory-limit``) skips that estimate.
"""

from __future__ import annotations

import math
import numbers
import os
import resource
from typing import Any

from .errors import ConfigError

MAX_POSITIONS = 1 << 22  # D = C*H*W, e.g. 3x1024x1024 fits
MAX_CATEGORIES = 1 << 16  # K, e.g. 16-bit grey levels
IGNORE_ENV = "DENSREG_IGNORE_MEMORY_LIMIT"


def check_event_shape(event_shape: Any, num_categories: Any, where: str = "",
                      continuous: bool = False) -> tuple[tuple[int, int, int], int]:
    """Validate (C, H, W) and K as plain positive integers within the bounds -> (shape, K); ConfigError otherwise.

    ``continuous``: real-valued data, whose K must be 0 (there are no levels).
    """
    prefix = f"{where}: " if where else ""
    if (not isinstance(event_shape, (list, tuple)) or len(event_shape) != 3
            or not all(_is_int(s) and s >= 1 for s in event_shape)):
        raise ConfigError(f"{prefix}event_shape must be three positive integers (C, H, W), got {event_shape!r}")
    shape = tuple(int(s) for s in event_shape)
    if math.prod(shape) > MAX_POSITIONS:
        raise ConfigError(f"{prefix}event_shape {list(shape)} has {math.prod(shape)} values per image, more than "
                          f"the {MAX_POSITIONS} densreg supports")
    if continuous:
        if not _is_int(num_categories) or num_categories != 0:
            raise ConfigError(f"{prefix}real-valued (continuous) data have no levels: num_categories must be 0, "
                              f"got {num_categories!r}")
        return shape, 0
    if not _is_int(num_categories) or not 2 <= num_categories <= MAX_CATEGORIES:
        raise ConfigError(f"{prefix}num_categories must be an integer from 2 to {MAX_CATEGORIES}, "
                          f"got {num_categories!r}")
    return shape, int(num_categories)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable (Linux) or physical memory, capped by rlimits."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            avail = min(avail, max(soft - _in_use(limit), 0))
    return avail


def _in_use(limit: int) -> int:
    """What already counts against ``limit``: the process's virtual size (AS) or data size (DATA), in bytes."""
    key = "VmSize:" if limit == resource.RLIMIT_AS else "VmData:"
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(nbytes: float, what: str, hint: str) -> None:
    """ConfigError when ``what`` (e.g. "sampling 10000000 images of 1x28x28") needs more than is available.

    ``hint``: how to need less (e.g. "lower -n"). Skipped when DENSREG_IGNORE_MEMORY_LIMIT=1.
    """
    if os.environ.get(IGNORE_ENV) == "1":
        return
    avail = available_memory()
    if nbytes > avail:
        raise ConfigError(f"{what} needs about {human_bytes(nbytes)} of memory, more than the {human_bytes(avail)} "
                          f"available; {hint}, or rerun with densreg --ignore-memory-limit")
