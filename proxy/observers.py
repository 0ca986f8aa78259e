"""Observers watch traffic beside the byte stream; they never steer, block or await.

Hook order per exchange (the documented contract every observer relies on)::

    exchange_started → response_started? → run_event* → exchange_finished

- `exchange_started`: the request is known (route, key_id, body); nothing sent upstream yet.
- `response_started`: the upstream's status and headers have gone to the client.
- `run_event`: one event of a run (an SSE event, or the snapshot in a JSON body), after its
  bytes went to the client.
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

from .exchange import Exchange, RunEvent

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

    def exchange_finished(self, ex: Exchange) -> None:
        pass


ErrorHook = Callable[[str, str], None]


class Observers(Observer):
    """Fans every hook out to each observer in order, isolating their failures."""

    name = "observers"

    def __init__(self, observers: Sequence[Observer], on_error: ErrorHook | None = None) -> None:
        self._observers = tuple(observers)
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
        for observer in self._observers:
            try:
                observer.exchange_started(ex)
            except Exception:
                self._failed(observer, "exchange_started")

    def response_started(self, ex: Exchange) -> None:
        for observer in self._observers:
            try:
                observer.response_started(ex)
            except Exception:
                self._failed(observer, "response_started")

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        for observer in self._observers:
            try:
                observer.run_event(ex, event)
            except Exception:
                self._failed(observer, "run_event")

    def exchange_finished(self, ex: Exchange) -> None:
        for observer in self._observers:
            try:
                observer.exchange_finished(ex)
            except Exception:
                self._failed(observer, "exchange_finished")
