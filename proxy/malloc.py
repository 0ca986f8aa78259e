"""The C allocators under the proxy, and when they give memory back (issue #3: the proxy's RSS).

glibc (Python's and DuckDB's C++ objects). glibc starts with a 128 KiB mmap threshold and raises
it (up to 32 MiB) each time a large block that was mapped is freed. After the writer's first
batches, every large buffer it builds (a batch's JSON document and its column slices, 1 to 15 MB)
is therefore carved from an arena, and the arena keeps those pages once the buffer is freed:
glibc's arenas held 20-30 MB of free memory after the benchmark's 200 warm-up runs, and more after
each burst. `fix_mmap_threshold()` turns the dynamic threshold off: a block of at least
`MMAP_THRESHOLD` is mapped for its own use and unmapped when freed, so its pages go back at once
(and glibc trims an arena's free top above 128 KiB instead of a raised trim threshold). Why 1 MiB
and not 128 KiB: the relay's reads (uvloop reads up to 256 KiB) and other mid-sized blocks keep
coming from the arenas, on the event loop as before; only the writer's large buffers pay a map,
an unmap and their page faults, on the writer thread (about 11,000 more minor faults for the
benchmark's 72,000 recorded events). `malloc_trim()` would also return the arenas' free pages in
the middle, but it holds each arena's lock while it walks it (4 ms on average, 20 ms at worst
here), the event loop's arena included.

jemalloc (DuckDB's buffers and query memory, in the Linux wheels). DuckDB's jemalloc purges the
pages of freed memory only as it allocates more (a 1 s decay, no background thread), and DuckDB
itself purges only from its worker threads after 0.5 s idle, each its own arena; the writer is
not one of them. So what a batch's statements used stayed resident: ~10 MB after the benchmark's
200 warm-up runs, ~15 MB with its 1,000 streams open, ~50 MB once their completion was written.
`duckdb_purger()` gives the writer what DuckDB's own `Allocator::FlushAll` calls,
`mallctl("arena.<all>.purge")`, through the symbol the wheel exports; DuckDB's
`allocator_background_threads` setting helped less (pages freed within the last second are still
resident, and the benchmark samples while batches are written).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable

log = logging.getLogger("runtap")

M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter number (malloc.h)."""
MMAP_THRESHOLD = 1 << 20
PURGE_ALL_ARENAS = b"arena.4096.purge"
"""4096 is jemalloc's MALLCTL_ARENAS_ALL."""


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


def duckdb_purger() -> Callable[[], bool] | None:
    """A function that returns the pages DuckDB's allocator holds but does not use to the system
    (True if it did), or None when this DuckDB has no jemalloc of its own (the macOS and Windows
    wheels use the system allocator)."""
    import duckdb  # noqa: F401  # loads the extension module whose symbols are looked up

    module = sys.modules.get("_duckdb") or sys.modules.get("duckdb.duckdb")  # 1.4+ / earlier wheels
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    try:
        mallctl = ctypes.CDLL(path).duckdb_je_mallctl  # the loaded library again, not a second copy
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    mallctl.restype = ctypes.c_int

    def purge() -> bool:
        return mallctl(PURGE_ALL_ARENAS, None, None, None, 0) == 0

    return purge
