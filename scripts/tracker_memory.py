"""Memory the run tracker keeps per tracked run (README, "Load and soak"; issue #3).

Feeds N copies of the benchmark's streamed run (``bench_upstream.capture()``: 60 events, a
message of 330 characters), each with its own ids, through a ``Tap`` into one ``RunTracker`` and
reports the Python heap it holds once they are over (tracemalloc), with the allocation sites that
hold the most. The tracker keeps up to ``max_tracked_runs`` runs (50,000 by default), so this
times that is its share of the proxy's memory once full; the observers' per-run entries (metrics,
budgets) are not included.

    .venv/bin/python scripts/tracker_memory.py [N]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_upstream  # after the path tweak, to run from a checkout

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observers
from proxy.tap import Tap


def feed(tracker: RunTracker, frames: list[bytes], body: bytes, n: int) -> None:
    route = classify("POST", "/v1/threads/runs")
    for i in range(n):
        token = f"M{i:019d}".encode()
        ex = Exchange(route, "POST", "/v1/threads/runs", "", "sha256:0000000000000000", body)
        ex.status = 200
        tap = Tap(ex, tracker, Observers([]), 1 << 24)
        tap.response_started("text/event-stream; charset=utf-8", None)
        for frame in frames:
            tap.feed(frame.replace(bench_upstream.PLACEHOLDER, token))
        tap.end(Outcome.COMPLETED)
        tracker.drain_dirty(ex.request_id)


def main(n: int) -> None:
    frames = asyncio.run(bench_upstream.capture()).frames
    body = orjson.dumps(bench_upstream.STREAM_REQUEST)
    tracker = RunTracker(max(n, 1))
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    feed(tracker, frames, body, n)
    gc.collect()
    held = tracemalloc.take_snapshot().compare_to(start, "lineno")
    tracemalloc.stop()
    total = sum(stat.size_diff for stat in held)
    print(f"{n:,} runs tracked: {total / 1e6:.2f} MB, {total / n:,.0f} B per run "
          f"({len(tracker.runs):,} runs, {len(tracker._steps):,} steps, {len(tracker._messages):,} messages)")
    for stat in held[:8]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / n:7,.0f} B/run  {stat.count_diff / n:5.1f} blocks/run  "
              f"{frame.filename}:{frame.lineno}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
