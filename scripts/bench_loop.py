"""Micro-benchmark: the event loop's CPU per streamed run for recording it, beside the relay.

Replays the benchmark's own streamed run (``bench_upstream.py``: 60 SSE events, ~15 KB, one event
per chunk as the upstream writes them) through a ``Tap`` and the observers exactly as the proxy
builds them (``app.make_app`` with the default settings: recorder, metrics, budgets; tracing off),
with fresh ids per run so each is new to the tracker. One run per turn of an asyncio loop, as in
the proxy. The writer thread is not started: its queue is emptied every 50 runs, so only the
loop's side is timed (process CPU time, not wall time: the figure holds on a busy machine).

Rows: the tap alone (SSE framing, JSON of the non-delta events, run stitching), then with the
recorder, metrics and budgets observers added; and the whole set under CPython's default
garbage-collector settings against ``proxy.gc_policy`` (what ``runtap serve`` applies), after a
warm-up that leaves a few thousand runs tracked, as a running proxy has.

    python scripts/bench_loop.py [--runs 3000] [--repeat 3] [--kind stream|responses|chat]

`--kind responses` and `--kind chat` replay the benchmark's streamed Response (60 events) and Chat
stream (60 frames, with include_usage) instead of the Assistants run; `--chat-parsed` parses every
Chat chunk as runtap did before its content chunks were deltas. `--kind socket` replays the same
Response over the WebSocket mode: a client `response.create` frame, then each event as one server
text frame, through `relay.socket_tap.SocketTap` (100 creates per socket), as the tunnel hands them
over after writing each read to the client.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_upstream  # the benchmark's stream, captured from the faithful fake
from multidict import CIMultiDict

from proxy import gc_policy  # after the path tweak, to run from a checkout
from proxy.apis import classify
from proxy.app import PARTS, Parts, make_app
from proxy.config import Settings
from proxy.exchange import Exchange, Outcome
from proxy.observers import Observers
from proxy.relay.forward import Forwarder
from proxy.relay.socket_tap import SocketTap
from proxy.tap import Tap
from proxy.websocket import server_text_frame

KINDS = {
    "stream": ("/v1/threads/runs", json.dumps(bench_upstream.STREAM_REQUEST).encode()),
    "responses": ("/v1/responses", b'{"model":"gpt-4o","input":"hi","stream":true}'),
    "socket": ("/v1/responses", b'{"type":"response.create","model":"gpt-4o","input":"hi"}'),
    "chat": ("/v1/chat/completions", b'{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},'
             b'"messages":[{"role":"user","content":"hi"}]}'),
}


class Replayer:
    def __init__(self, parts: Parts, frames: list[bytes], kind: str = "stream") -> None:
        self.parts = parts
        self.path, self.body = KINDS[kind]
        hex_ids = kind in ("responses", "socket")
        self.placeholder = bench_upstream.HEX_PLACEHOLDER if hex_ids else bench_upstream.PLACEHOLDER
        self.observers = parts.observers
        self.frames = frames
        self.counter = itertools.count()
        self.batch = True
        self.kind = kind
        self._socket: SocketTap | None = None
        self._socket_runs = 0
        # A socket's server frames carry each event's data line (the SSE stream's `data: ` text).
        self.messages = [frame.split(b"\ndata: ", 1)[1].rstrip(b"\n") for frame in frames]

    def run(self) -> None:
        """One streamed run through the tap, as forward.py and deferred_tap.DeferredTap drive it."""
        if self.kind == "socket":
            return self.run_socket()
        token = f"LOOP{next(self.counter):016d}".encode()
        if len(self.placeholder) != len(token):
            token = token.hex().encode()  # Responses ids are hex
        observers, tracker = self.observers, self.parts.tracker
        ex = Exchange(classify("POST", self.path), "POST", self.path, "", "sha256:0123456789abcdef", self.body)
        ex.t_sent = time.perf_counter()
        observers.exchange_started(ex)
        ex.status, ex.content_type = 200, "text/event-stream; charset=utf-8"
        ex.t_upstream_headers = ex.t_headers = time.perf_counter()
        tap = Tap(ex, tracker, observers, 1 << 24)
        tap.response_started(ex.content_type, None)
        chunks = [frame.replace(self.placeholder, token) for frame in self.frames]
        times = [time.time()] * len(chunks)
        if self.batch:  # the proxy's DeferredTap hands a fast stream over in one batch
            tap.feed_batch(chunks, times)
        else:  # a slow upstream: each chunk its own batch
            for chunk, at in zip(chunks, times, strict=True):
                tap.feed_batch([chunk], [at])
        tap.end(Outcome.COMPLETED)

    def new_socket(self) -> None:
        """The next socket run opens a fresh socket (and forwarder, with the observers now chosen)."""
        if self._socket is not None:
            self._socket.ended(Outcome.COMPLETED, None)
        self._socket = None

    def run_socket(self) -> None:
        """One response over a socket: its create from the client, then one server frame per event."""
        if self._socket is None or self._socket_runs == 100:
            self.new_socket()
            forwarder = Forwarder(None, self.parts.settings, self.observers, self.parts.tracker,  # type: ignore[arg-type]
                                  set())
            socket = Exchange(classify("GET", "/v1/responses"), "GET", "/v1/responses", "",
                              "sha256:0123456789abcdef", None)
            self._socket = SocketTap(socket, CIMultiDict(), forwarder, 1 << 24)
            self._socket.from_upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       b"Connection: Upgrade\r\n\r\n")
            self._socket_runs = 0
        self._socket_runs += 1
        token = f"LOOP{next(self.counter):016d}".encode().hex().encode()
        body = self.body
        # Masked with a zero key: the payload's bytes are its own (a valid client frame).
        self._socket.from_client(bytes((0x81, 0x80 | len(body))) + b"\0\0\0\0" + body)
        for message in self.messages:
            self._socket.from_upstream(server_text_frame(message.replace(self.placeholder, token)))

    async def cpu_per_run(self, runs: int) -> float:
        """Microseconds of process CPU per run, one run per turn of the loop."""
        writer_queue = self.parts.writer._queue
        start = time.process_time()
        for i in range(runs):
            self.run()
            await asyncio.sleep(0)
            if i % 50 == 0:
                while not writer_queue.empty():
                    writer_queue.get_nowait()
        return (time.process_time() - start) / runs * 1e6


async def main(runs: int, repeat: int, kind: str) -> None:
    captured = await bench_upstream.capture()
    frames = {"stream": captured.frames, "responses": captured.responses, "socket": captured.responses,
              "chat": captured.chat}[kind]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"server": {"upstream": "http://127.0.0.1:9"},
                                            "recorder": {"db": str(Path(tmp) / "unused.duckdb")}})
        parts = make_app(settings)[PARTS]
        replayer = Replayer(parts, frames, kind)
        every = parts.observers._observers  # recorder, metrics, budgets
        print(f"{len(frames)} events, {sum(map(len, frames)):,} bytes per run; {runs:,} runs, best of {repeat}")
        print("| observers | GC | loop CPU per run |")
        print("|---|---|---|")
        gc.disable()  # the observer rows measure the work itself
        for label, chosen in (("tap alone", ()), ("+ recorder", every[:1]), ("+ metrics", every[:2]),
                              ("+ budgets (all)", every)):
            replayer.observers = Observers(chosen)
            replayer.new_socket()
            best = min([await replayer.cpu_per_run(runs) for _ in range(repeat)])
            print(f"| {label} | off | {best:.0f} us |")
        replayer.observers = parts.observers
        replayer.new_socket()
        if kind != "socket":  # a socket's frames come one by one whatever the upstream's speed
            replayer.batch = False
            best = min([await replayer.cpu_per_run(runs) for _ in range(repeat)])
            print(f"| all, one chunk per batch (a slow upstream) | off | {best:.0f} us |")
            replayer.batch = True
        gc.enable()
        for _ in range(2 * runs):  # a running proxy tracks runs: the collector has an old generation to scan
            replayer.run()
        defaults = gc.get_threshold()
        for label in ("CPython defaults", "gc_policy"):
            if label == "gc_policy":
                gc_policy.settle_after_startup()
            full = gc.get_stats()[2]["collections"]
            # The mean, not the best: a full collection comes every few thousand runs, and the best of
            # a few repeats would be one without it.
            mean = sum([await replayer.cpu_per_run(runs) for _ in range(repeat)]) / repeat
            full = gc.get_stats()[2]["collections"] - full
            print(f"| all | {label} | {mean:.0f} us ({full} full collections in {runs * repeat:,} runs) |")
        gc.unfreeze()
        gc.set_threshold(*defaults)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kind", choices=sorted(KINDS), default="stream")
    parser.add_argument("--chat-parsed", action="store_true",
                        help="parse every Chat chunk, as before content chunks were deltas (for a before/after)")
    args = parser.parse_args()
    if args.chat_parsed:
        from proxy.apis.chat.api import ChatApi

        ChatApi.delta_data = None
    asyncio.run(main(args.runs, args.repeat, args.kind))
