"""The Assistants API (threads and runs) on the core's interface (apis/base.py).

Also the protocol of Azure AI Foundry Agents (classic). Its routes are routes.py's; its stitcher is
runs.py's `RunTracker`, which is also the run model's store (proxy/runs.py) the app builds.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from ..base import Api, Route
from .routes import RouteKind, classify
from .runs import RunTracker

if TYPE_CHECKING:
    from ...exchange import Exchange
    from ...runs import RunStore, Seen, State

MESSAGE_DELTA = "thread.message.delta"
_FIRST_ID = b'event: thread.message.delta\ndata: {"id":"'


class AssistantsApi(Api):
    name = "assistants"
    prompt_limit = "max_prompt_tokens"
    output_limits = ("max_completion_tokens",)

    def classify(self, method: str, path: str) -> Route | None:
        route = classify(method, path, self)
        return None if route.api is None else route

    delta_events = frozenset({MESSAGE_DELTA})

    def deltas(self, ex: Exchange, frames: bytes, store: RunStore) -> bool:
        # The bulk of a stream: a message's text in pieces, needed only if the stream breaks off
        # before `thread.message.completed` (runs.RunTracker.message_delta keeps the bytes). A run
        # of deltas lies between two lifecycle events, so it is one message's: the one the first
        # names (MessageState.text reads only that message's from it all the same).
        if not frames.startswith(_FIRST_ID):
            return False
        start = len(_FIRST_ID)
        end = frames.find(b'"', start)
        if end < 0:
            return False
        _tracker(store).message_delta(frames[start:end].decode("utf-8", "replace"), frames, ex.request_id)
        return True

    def fold(self, ex: Exchange, obj: dict[str, Any], store: RunStore, seen: Seen) -> list[State]:
        if obj.get("object") == "thread" and isinstance(obj.get("id"), str):
            ex.thread_id = obj["id"]
            return []
        # An error body ({"error": ...}) has no `object` and changes nothing.
        return _tracker(store).apply(obj, seen)

    def request_changes(self, ex: Exchange, store: RunStore, at: datetime) -> list[State]:
        if ex.route.kind != RouteKind.SUBMIT_TOOL_OUTPUTS or ex.request_json is None or ex.run_id is None:
            return []
        return list(_tracker(store).tool_outputs_submitted(ex.run_id, ex.request_json, at))


def _tracker(store: RunStore) -> RunTracker:
    # The app builds the Assistants RunTracker as the run store (app.py); a cast, not a check,
    # because deltas runs for most of a stream.
    return cast(RunTracker, store)
