"""The C allocator's settings for `runtap serve` (issue #3: the proxy's RSS).

glibc starts with a 128 KiB mmap threshold and raises it (up to 32 MiB) each time a large block
that was mapped is freed. After the writer's first batches, every large buffer it builds (a
batch's JSON document and its column slices, 1 to 15 MB) is therefore carved from an arena, and
the arena keeps those pages once the buffer is freed: glibc's arenas held 20-30 MB of free memory
after the benchmark's 200 warm-up runs, and more after each burst. A fixed threshold turns the
dynamic one off: a block of at least `MMAP_THRESHOLD` is mapped for its own use and unmapped
when freed, so its pages go back at once (and, with the threshold fixed, glibc also trims an
arena's free top above 128 KiB instead of a raised trim threshold).

Why 1 MiB and not the initial 128 KiB: the relay's reads (uvloop reads up to 256 KiB) and other
mid-sized blocks keep coming from the arenas, on the event loop as before; only the writer's
large buffers pay a map, an unmap and their page faults, on the writer thread (about 11,000 more
minor faults for the benchmark's 72,000 recorded events, ~15% more than before).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("runtap")

M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter number (malloc.h)."""
MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold for the whole process. False (and nothing changed) where the C
    library has no mallopt() (not glibc) or refuses the value."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused; freed large buffers may stay in the arenas", threshold)
        return False
    return True
