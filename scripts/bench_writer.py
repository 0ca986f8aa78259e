"""Throughput of store.Writer for SSE events, handed over as the recorder does: each stream's bytes.

Two runs on a fresh database file:
- unpaced: submit N rows as fast as the loop can, then ``await flush()``: rows/s end to end;
- paced at --rate rows/s: does the queue stay bounded at the load we promise (20,000 events/s)?

Each prints rows/s, the maximum queue depth and the worst event-loop stall seen by a 5 ms ticker
(the writer thread holds the GIL while it converts a batch's Python lists).

    python scripts/bench_writer.py [--rows 200000] [--rate 20000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.exchange import StreamBytes  # after the path tweak, to run from a checkout
from proxy.record.writer import Writer

WORDS = ["the", "run", "step", "tool", "call", "message", "delta", "token", "usage", "thread", "model"]


def make_rows(n: int, events_per_request: int = 300) -> list[dict[str, object]]:
    """Event rows like thread.message.delta: ~600 bytes of varied JSON text each."""
    rng = random.Random(1)
    pool = []
    for i in range(2000):
        text = " ".join(rng.choice(WORDS) for _ in range(75))[:480]
        pool.append(
            f'{{"id":"msg_{i:024x}","object":"thread.message.delta","delta":{{"content":'
            f'[{{"index":0,"type":"text","text":{{"value":"{text}"}}}}]}}}}'
        )
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, object]] = []
    request_id = run_id = ""
    for i in range(n):
        if i % events_per_request == 0:
            request_id, run_id = f"req_{uuid.uuid4().hex}", f"run_{uuid.uuid4().hex[:24]}"
        rows.append(
            {
                "request_id": request_id,
                "seq": i % events_per_request,
                "event": "thread.message.delta",
                "data": pool[i % len(pool)],
                "received_at": now + dt.timedelta(microseconds=i),
                "run_id": run_id,
            }
        )
    return rows


class Probe:
    """Samples queue depth and event-loop lag every 5 ms."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.max_depth = 0
        self.max_lag_s = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.max_lag_s = max(self.max_lag_s, time.perf_counter() - t - 0.005)
            self.max_depth = max(self.max_depth, self.writer.queue_depth)


Stream = tuple[str, str, StreamBytes]


def make_streams(rows: list[dict[str, object]]) -> list[Stream]:
    """The rows as the recorder hands them over: each request's events as one stream's bytes."""
    streams: dict[str, tuple[str, list[bytes], list[float]]] = {}
    for row in rows:
        _, chunks, times = streams.setdefault(str(row["request_id"]), (str(row["run_id"]), [], []))
        chunks.append(f"event: {row['event']}\ndata: {row['data']}\n\n".encode())
        times.append(row["received_at"].timestamp())  # type: ignore[attr-defined]
    return [(request_id, run_id, StreamBytes(0, chunks, times, True))
            for request_id, (run_id, chunks, times) in streams.items()]


async def submit_all(writer: Writer, streams: list[Stream], rate: float) -> None:
    """`rate`: events per second offered (0: as fast as the loop submits)."""
    start = time.perf_counter()
    events = 0
    for request_id, run_id, segment in streams:
        writer.submit_stream(request_id, run_id, segment)
        events += len(segment.chunks)
        if rate:
            await asyncio.sleep(max(0.0, start + events / rate - time.perf_counter()))
        else:
            await asyncio.sleep(0)


async def bench(db: Path, rows: list[dict[str, object]], rate: float, batch: int) -> None:
    writer = Writer(db, batch_max_rows=batch)
    writer.start()
    probe = Probe(writer)
    probe_task = asyncio.ensure_future(probe.run())
    t0 = time.perf_counter()
    await submit_all(writer, make_streams(rows), rate)
    submitted = time.perf_counter() - t0
    await writer.flush()
    elapsed = time.perf_counter() - t0
    probe_task.cancel()
    cur = writer.cursor()
    (count,) = cur.execute("select count(*) from events").fetchone() or (0,)
    cur.close()
    writer.close()
    size = await asyncio.to_thread(lambda: db.stat().st_size)
    label = f"paced {rate:,.0f}/s" if rate else "unpaced"
    print(
        f"{label:>16}: {len(rows):,} rows in {elapsed:.2f}s = {len(rows) / elapsed:,.0f} rows/s"
        f" (submit {submitted:.2f}s); max queue depth {probe.max_depth:,};"
        f" max loop stall {probe.max_lag_s * 1000:.1f} ms; rows in db {count:,};"
        f" spilled {writer.spilled_rows_total}; file {size / 2**20:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=20_000, help="rows/s for the paced run")
    parser.add_argument("--batch", type=int, default=5000, help="batch_max_rows")
    args = parser.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(Path(tmp) / "unpaced.duckdb", rows, 0, args.batch))
        asyncio.run(bench(Path(tmp) / "paced.duckdb", rows, args.rate, args.batch))


if __name__ == "__main__":
    main()
