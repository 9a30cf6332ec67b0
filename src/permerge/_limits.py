"""Sanity limits checked before anything is allocated.

A crafted or mistyped size (an image header claiming 30000 x 30000 pixels, an npz claiming
10^13 bytes, ``mlp:100000000``, a seed of 10^23) must end in one clear line, not in a
MemoryError, an out-of-memory kill or an overflow deep inside torch.
"""

from __future__ import annotations

import os

from .errors import PermergeError

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits; torch takes 64
MAX_IMAGE_SIDE = 4096  # pixels per image side (the datasets here are 28 or 32)
MAX_CHANNELS = 64
MAX_WIDTH = 1_000_000  # units in one hidden layer
MAX_SEEDS = 1000  # seeds in one experiment grid
MAX_TASKS = 100_000  # runs in one experiment grid


def check_seed(seed: object, name: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise PermergeError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_allocation(nbytes: int, what: str, error: type[PermergeError] = PermergeError) -> None:
    """Refuse to allocate more than the machine's physical memory."""
    mem = memory_bytes()
    if mem is not None and nbytes > mem:
        raise error(f"{what} needs {human_bytes(nbytes)}, more than this machine's {human_bytes(mem)} of memory")
