"""Observers watch traffic beside the byte stream; they never steer, block or await.

Hook order per exchange (the documented contract every observer relies on)::

    exchange_started → response_started? → (run_event | deltas | stream_bytes)* → exchange_finished

- `exchange_started`: the request is known (route, key_id, body); nothing sent upstream yet.
- `response_started`: the upstream's status and headers have gone to the client.
- `run_event`: one event of a run (an SSE event, or the snapshot in a JSON body), after its
  bytes went to the client.
- `deltas`: a run of consecutive delta frames (`exchange.Deltas`: never parsed), in one call: most
  of a stream, so an observer pays one call per run of deltas, not per frame. Sequence numbers
  interleave with `run_event`'s in stream order.
- `stream_bytes`: a streamed response's bytes as they came (`exchange.StreamBytes`), after the events
  they hold were delivered: once at the end of the stream, or once per segment of a long one.
- `exchange_finished`: exactly once, whatever the outcome (`Exchange.finish` guards it).

Hooks run on the event loop: they must not block, await, or touch the bytes. An observer that
raises loses its own record of that hook, never the client's stream: `Observers` swallows, logs
and counts every failure (mitmproxy's `safecall`, OTel's "never raise from instrumentation").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import ClassVar

from .exchange import Deltas, Exchange, RunEvent, StreamBytes

log = logging.getLogger("runtap.observers")


class Observer:
    """Base class with no-op hooks: each observer overrides only what it needs."""

    name: ClassVar[str] = "observer"

    def exchange_started(self, ex: Exchange) -> None:
        pass

    def response_started(self, ex: Exchange) -> None:
        pass

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        pass

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        pass

    def stream_bytes(self, ex: Exchange, segment: StreamBytes) -> None:
        pass

    def exchange_finished(self, ex: Exchange) -> None:
        pass


ErrorHook = Callable[[str, str], None]


Hooked = tuple[tuple[Observer, Callable[..., None]], ...]


def _hooked(observers: Sequence[Observer], hook: str) -> Hooked:
    """The observers that override `hook`, each with its bound method. `run_event` runs for every
    event of every stream: calling the no-op base hooks, and looking each method up again, would
    cost the loop ~0.1 us per observer and event (issue #4)."""
    default = getattr(Observer, hook)
    return tuple((o, getattr(o, hook)) for o in observers if getattr(type(o), hook) is not default)


class Observers(Observer):
    """Fans every hook out to each observer in order, isolating their failures.

    Each observer's hooks are looked up once, here: replace an observer's method before building
    its `Observers`, not after."""

    name = "observers"

    def __init__(self, observers: Sequence[Observer], on_error: ErrorHook | None = None) -> None:
        self._observers = tuple(observers)
        self._exchange_started = _hooked(observers, "exchange_started")
        self._response_started = _hooked(observers, "response_started")
        self._run_event = _hooked(observers, "run_event")
        self._deltas = _hooked(observers, "deltas")
        self._stream_bytes = _hooked(observers, "stream_bytes")
        self._exchange_finished = _hooked(observers, "exchange_finished")
        self.failures: Counter[tuple[str, str]] = Counter()
        self._on_error = on_error

    def _failed(self, observer: Observer, hook: str) -> None:
        # An observer bug may cost us a record; it must never cost the client its stream.
        self.failures[(observer.name, hook)] += 1
        log.exception("observer %s failed in %s", observer.name, hook)
        if self._on_error is not None:
            try:
                self._on_error(observer.name, hook)
            except Exception:
                log.exception("observer error hook failed")

    def exchange_started(self, ex: Exchange) -> None:
        for observer, hook in self._exchange_started:
            try:
                hook(ex)
            except Exception:
                self._failed(observer, "exchange_started")

    def response_started(self, ex: Exchange) -> None:
        for observer, hook in self._response_started:
            try:
                hook(ex)
            except Exception:
                self._failed(observer, "response_started")

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        for observer, hook in self._run_event:
            try:
                hook(ex, event)
            except Exception:
                self._failed(observer, "run_event")

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        for observer, hook in self._deltas:
            try:
                hook(ex, deltas)
            except Exception:
                self._failed(observer, "deltas")

    def stream_bytes(self, ex: Exchange, segment: StreamBytes) -> None:
        for observer, hook in self._stream_bytes:
            try:
                hook(ex, segment)
            except Exception:
                self._failed(observer, "stream_bytes")

    def exchange_finished(self, ex: Exchange) -> None:
        for observer, hook in self._exchange_finished:
            try:
                hook(ex)
            except Exception:
                self._failed(observer, "exchange_finished")
