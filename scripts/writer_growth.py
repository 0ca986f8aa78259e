"""Does the recording cost more as it grows? The writer alone (record.writer.Writer, its own thread),
fed 1,000 runs at a time as the recorder hands them over (a request's two rows, the run's two
snapshots, a step, a message, and the benchmark's 60-event stream as its bytes), with the wall
time and CPU of each batch printed every 5 batches while the file grows to `--runs` runs.

    python scripts/writer_growth.py [--runs 50000] [--memory-limit 256MB]

`--memory-limit` caps DuckDB's buffer pool as `[recorder] duckdb_memory_limit` does in the proxy
(its default there is 256MB; without the option DuckDB takes up to 80% of the RAM).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_upstream  # the benchmark's stream, captured from the faithful fake

from proxy.exchange import StreamBytes  # after the path tweak, to run from a checkout
from proxy.record.writer import Writer

BATCH = 1000


def submit_run(writer: Writer, n: int, frames: list[bytes], now: datetime) -> None:
    token = f"G{n:019d}".encode()
    request_id, run_id = f"rt_{n:032x}", f"run_{token.decode()}xxxx"
    writer.submit("requests", {"request_id": request_id, "started_at": now, "method": "POST",
                               "path": "/v1/threads/runs", "route": "POST /v1/threads/runs", "key_id": "sha256:k",
                               "request_body": '{"assistant_id":"asst_1","stream":true}', "request_bytes": 40})
    writer.submit("runs", {"run_id": run_id, "thread_id": f"thread_{n}", "assistant_id": "asst_1", "model": "gpt-4o",
                           "status": "in_progress", "key_id": "sha256:k", "first_seen_at": now, "last_seen_at": now,
                           "api": "assistants"})
    writer.submit("run_steps", {"step_id": f"step_{n}", "run_id": run_id, "type": "message_creation",
                                "status": "completed", "first_seen_at": now, "last_seen_at": now})
    writer.submit("messages", {"message_id": f"msg_{n}", "run_id": run_id, "role": "assistant",
                               "status": "completed", "text": "hello there"})
    writer.submit("runs", {"run_id": run_id, "status": "completed", "prompt_tokens": 10, "completion_tokens": 5,
                           "total_tokens": 15, "ended_at": now, "last_seen_at": now})
    chunks = [frame.replace(bench_upstream.PLACEHOLDER, token) for frame in frames]
    writer.submit_stream(request_id, run_id, StreamBytes(0, chunks, [time.time()] * len(chunks), True))
    writer.submit("requests", {"request_id": request_id, "status": 200, "streamed": True, "outcome": "completed",
                               "run_id": run_id, "event_count": len(chunks), "response_bytes": sum(map(len, chunks))})


async def main(runs: int, memory_limit: str | None) -> None:
    frames = (await bench_upstream.capture()).frames
    with tempfile.TemporaryDirectory() as tmp:
        writer = Writer(Path(tmp) / "growth.duckdb", memory_limit=memory_limit)
        await asyncio.to_thread(writer.start)
        batches = max(1, runs // BATCH)
        n = 0
        for batch in range(batches):
            wall, cpu = time.perf_counter(), time.process_time()
            now = datetime.now(UTC)
            for _ in range(BATCH):
                n += 1
                submit_run(writer, n, frames, now)
            await writer.flush()
            if batch % 5 == 0 or batch == batches - 1:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
                print(f"{n:7,d} runs: {BATCH:,} written in {time.perf_counter() - wall:.2f} s wall, "
                      f"{time.process_time() - cpu:.2f} s CPU (all threads); peak RSS {rss} MiB", flush=True)
        await asyncio.to_thread(writer.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--memory-limit", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.memory_limit))
