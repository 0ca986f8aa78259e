"""The garbage collector's settings for the serving process.

Why: CPython's cyclic collector runs by allocation counts (700, 10, 10 by default). runtap keeps
long-lived objects by design (the run tracker holds up to `max_tracked_runs` runs), so the oldest
generation grows by every run, and with the default thresholds the full collections that follow
become one of the largest costs on the event loop. `scripts/bench_loop.py` replays the
benchmark's 60-event run through the tap, the recorder, metrics and budgets: 591 us of loop CPU
per run with the defaults against 552 us with the settings below (6,000 to 15,000 runs tracked);
while the tracker grew from 3,000 to 13,000 runs, 689 against 571 us, the defaults' full
collections alone taking 140 us per run, in pauses of ~100 ms in front of whatever request waits.

- `gc.freeze()` after start-up moves every object of the imports, the config and the migrations
  into the permanent generation: they live as long as the process, and no collection has to
  traverse them again.
- A first threshold of 10,000 instead of 700: objects that die young (per-event objects,
  aiohttp's per-request cycles) are mostly freed by reference counting before a collection sees
  them. Cyclic garbage waits a little longer to be freed: at most 10,000 container allocations'
  worth, a few MB.

The full collection still comes when the older generation has grown by a quarter (CPython's own
rule); that is what bounds its frequency once the tracker is full.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10


def settle_after_startup() -> None:
    """Freeze what start-up built and raise the first threshold. Call once, when serving begins."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
