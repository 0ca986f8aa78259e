"""Micro-benchmark: what the metrics and tracing observers cost per event, beside the stream.

Records the real bytes of a tool-calling conversation (two streams: create, then
submit_tool_outputs) and of a long text run from the fake upstream, then replays them through the
tap, exactly as forward.py does, with fresh ids for every replay so each run is new to the tracker
and the observers. Three observer sets are timed:

- baseline: the recorder alone (into a no-op sink);
- + metrics: the recorder and the MetricsObserver;
- + metrics + tracing: and the TracingObserver, its span records batched to the export thread,
  which encodes them to OTLP protobuf as the real exporter does and drops the bytes (no network).

Times are CPU time (`time.thread_time`) of the replaying thread, which plays the event loop: the
difference to the baseline, per SSE event, is observability's cost per event on the loop. The
export thread's CPU (process time less the loop's, the final export included) is shown apart:
it is off the loop, but shares the GIL and the machine's cores with it. The garbage collector is
off while timing. Each figure is the minimum of `--repeat` runs.

    python scripts/bench_observers.py [--iterations N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.apis import classify
from proxy.apis.assistants.runs import RunTracker
from proxy.config import Settings
from proxy.exchange import Exchange, Outcome, RunEvent, utcnow
from proxy.observers import Observer, Observers
from proxy.record.recorder import Recorder
from proxy.tap import Tap
from proxy.telemetry.metrics import make_registry
from proxy.telemetry.otlp_encode import OtlpEncoder
from proxy.telemetry.spans import SpanRecord
from proxy.telemetry.tracing import Tracing, make_tracing
from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.scripts import Script

ID = re.compile(rb"\b(run|step|msg|thread|call)_[A-Za-z0-9]{24}\b")
HEADERS = {"Authorization": "Bearer sk-bench", "OpenAI-Beta": "assistants=v2"}


class EncodeOnly:
    """The OTLP/HTTP exporter's work without the network: encode each batch, drop the bytes."""

    def __init__(self, encoder: OtlpEncoder) -> None:
        self._encoder = encoder

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        self._encoder.encode(spans)
        return True

    def force_flush(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass


class NullSink:
    def submit(self, table: str, row: dict[str, Any]) -> None:
        pass

    def submit_stream(self, request_id: str, run_id: str | None, segment: Any, *, record_content: bool = True) -> None:
        pass


Exchange_ = tuple[str, str, bytes, bytes]
"""(method, path, request body, response bytes)"""


async def record() -> list[list[Exchange_]]:
    """The wire bytes of one tool conversation and of one 60-delta text run."""
    fake = FakeUpstream(seed=1)
    async with TestServer(fake.app) as server, aiohttp.ClientSession(headers=HEADERS) as http:
        async def post(path: str, body: dict[str, Any]) -> Exchange_:
            raw = orjson.dumps(body)
            async with http.post(server.make_url(path), data=raw, headers={"Content-Type": "application/json"}) as r:
                return "POST", path, raw, await r.read()

        fake.enqueue(Script.tool_then_text())
        first = await post("/v1/threads/runs", {"assistant_id": "asst_abc", "stream": True})
        run = _last_run(first[3])
        call_id = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"]
        path = f"/v1/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs"
        second = await post(path, {"stream": True, "tool_outputs": [{"tool_call_id": call_id, "output": "18C"}]})
        fake.enqueue(Script.text("word " * 60, chunks=60))
        text = await post("/v1/threads/runs", {"assistant_id": "asst_abc", "stream": True})
    return [[first, second], [text]]


def _last_run(stream: bytes) -> dict[str, Any]:
    runs = [orjson.loads(line[6:]) for line in stream.split(b"\n") if line.startswith(b'data: {"id":"run_')]
    return runs[-1]


def fresh(conversation: list[Exchange_], n: int) -> list[Exchange_]:
    """The same conversation with every id replaced by one unique to replay `n`."""
    seen: dict[bytes, bytes] = {}

    def new(match: re.Match[bytes]) -> bytes:
        old = match.group(0)
        if old not in seen:
            seen[old] = match.group(1) + b"_" + f"{n:08d}{len(seen):016d}".encode()
        return seen[old]

    return [(m, ID.sub(new, p.encode()).decode(), ID.sub(new, body), ID.sub(new, data))
            for m, p, body, data in conversation]


def replay(observers: Observers, tracker: RunTracker, conversation: list[Exchange_]) -> int:
    """Feed each response to a tap event by event, as forward.py does; returns the event count."""
    events = 0
    for method, path, body, data in conversation:
        ex = Exchange(classify(method, path), method, path, "", "sha256:0123456789abcdef", body)
        ex.status, ex.content_type = 200, "text/event-stream"
        ex.t_sent = ex.t_upstream_headers = ex.t_headers = time.perf_counter()
        observers.exchange_started(ex)
        tap = Tap(ex, tracker, observers, 1 << 24)
        tap.response_started(ex.content_type, None)
        for frame in data.split(b"\n\n"):
            if frame:
                tap.feed(frame + b"\n\n")
        tap.end(Outcome.COMPLETED)
        events += ex.event_count
    return events


def build(kind: str) -> tuple[Observers, RunTracker, Tracing | None]:
    tracker = RunTracker()
    watched: list[Observer] = [Recorder(NullSink(), tracker)]
    tracing = None
    if kind != "baseline":
        _, metrics = make_registry(NullWriter(), tracker)
        watched.append(metrics)
    if kind == "tracing":
        settings = Settings.model_validate({"server": {"upstream": "https://api.openai.com"},
                                            "telemetry": {"otlp_endpoint": "http://127.0.0.1:4318"}})
        tracing = make_tracing(settings, tracker, env={})
        assert tracing is not None
        tracing.exporter.inner = EncodeOnly(OtlpEncoder(tracing.resource, tracing.scope))
        watched.append(tracing.observer)
    return Observers(watched), tracker, tracing


class NullWriter:
    queue_depth = 0
    healthy = True
    rows_written_total = spilled_rows_total = write_errors_total = lost_rows_total = 0


def bench(kind: str, conversation: list[Exchange_], iterations: int) -> tuple[float, float, int]:
    """CPU nanoseconds per replayed conversation on the loop and off it (the export thread), and
    its number of events."""
    observers, tracker, tracing = build(kind)
    replays = [fresh(conversation, n) for n in range(iterations)]
    gc.collect()
    gc.disable()
    try:
        process, loop = time.process_time_ns(), time.thread_time_ns()
        events = sum(replay(observers, tracker, r) for r in replays)
        loop = time.thread_time_ns() - loop
        if tracing is not None:
            tracing.shutdown()  # exports what is still queued
        process = time.process_time_ns() - process
    finally:
        gc.enable()
    return loop / iterations, (process - loop) / iterations, events // iterations


def bench_delta(kind: str, conversation: list[Exchange_], n: int = 100_000) -> float:
    """Nanoseconds one observer spends on one content delta of an open run: the bulk of a stream."""
    observers, tracker, tracing = build(kind)
    replay(observers, tracker, fresh(conversation[:1], 0))  # the run is now open, paused for its tool call
    method, path, body, _ = conversation[0]
    ex = Exchange(classify(method, path), method, path, "", None, body)
    ex.run_id = next(iter(tracker.runs))
    event = RunEvent(9, "thread.message.delta", '{"id":"msg_x","object":"thread.message.delta"}', None, utcnow())
    observer = observers._observers[-1]
    start = time.thread_time_ns()
    for _ in range(n):
        observer.run_event(ex, event)
    elapsed = time.thread_time_ns() - start
    if tracing is not None:
        tracing.shutdown()
    return elapsed / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    conversations = asyncio.run(record())
    print("CPU time per conversation, us (the loop's thread; the export thread apart):\n")
    print("| conversation | events | baseline | + metrics | + metrics + tracing | observability on the loop "
          "| per event ns | export thread |")
    print("|---|---|---|---|---|---|---|---|")
    for name, conversation in zip(("tool call (2 streams)", "60-delta text run"), conversations, strict=True):
        loop: dict[str, list[float]] = {"baseline": [], "metrics": [], "tracing": []}
        export: list[float] = []
        events = 0
        for _ in range(args.repeat):
            for kind in loop:
                on_loop, off_loop, events = bench(kind, conversation, args.iterations)
                loop[kind].append(on_loop)
                if kind == "tracing":
                    export.append(off_loop)
        # The minimum of the repeats: the least disturbed by whatever else the machine runs.
        base, metrics, tracing = (min(loop[k]) / 1000 for k in ("baseline", "metrics", "tracing"))
        print(f"| {name} | {events} | {base:.0f} | {metrics:.0f} | {tracing:.0f} | {tracing - base:.0f} "
              f"| {(tracing - base) * 1000 / events:.0f} | {min(export) / 1000:.0f} |")
    tool = conversations[0]
    metrics_ns = min(bench_delta("metrics", tool) for _ in range(args.repeat))
    tracing_ns = min(bench_delta("tracing", tool) for _ in range(args.repeat))
    print(f"\nOne content delta of an open run: metrics {metrics_ns:.0f} ns, tracing {tracing_ns:.0f} ns.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
