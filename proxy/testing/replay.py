"""Drive observers through the documented hook order without sockets (mitmproxy's `cycle`)."""

from __future__ import annotations

from collections.abc import Iterable

from ..exchange import Deltas, Exchange, Outcome, RunEvent
from ..observers import Observer
from ..sse import SseDecoder


def replay(observer: Observer, ex: Exchange, events: Iterable[RunEvent],
           outcome: Outcome = Outcome.COMPLETED) -> Exchange:
    """exchange_started → response_started → run_event* → exchange_finished, in that order."""
    observer.exchange_started(ex)
    observer.response_started(ex)
    for event in events:
        observer.run_event(ex, event)
    if ex.finish(outcome):
        observer.exchange_finished(ex)
    return ex


class Capture(Observer):
    """Remembers every hook call, for tests."""

    name = "capture"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def exchange_started(self, ex: Exchange) -> None:
        self.calls.append(("exchange_started", ex.request_id))

    def response_started(self, ex: Exchange) -> None:
        self.calls.append(("response_started", ex.status))

    def run_event(self, ex: Exchange, event: RunEvent) -> None:
        self.calls.append(("run_event", event))

    def deltas(self, ex: Exchange, deltas: Deltas) -> None:
        # As events, so a test sees the whole stream in order whichever way it was delivered.
        seq, _count, at, frames = deltas
        for i, event in enumerate(SseDecoder().feed(frames)):
            self.calls.append(("run_event", RunEvent(seq + i, event.event, event.data, None, at)))

    def exchange_finished(self, ex: Exchange) -> None:
        self.calls.append(("exchange_finished", ex.outcome))

    @property
    def events(self) -> list[RunEvent]:
        return [e for hook, e in self.calls if hook == "run_event"]  # type: ignore[misc]
