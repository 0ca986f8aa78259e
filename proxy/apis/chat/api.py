"""Chat Completions on the core's interface (apis/base.py): routes.py's routes, stitch.py's turns.

A Chat stream's frames are data-only (`data: {chunk}`, then `data: [DONE]`, §9): with no event
name to tell a delta by, every chunk is parsed and folded (its fragments appended), which costs a
parse per chunk on the loop where Responses and Assistants deltas cost none.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...runs import Seen
from ..base import Api, Route
from .routes import classify
from .stitch import ChatTracker

if TYPE_CHECKING:
    from ...exchange import Exchange, Outcome
    from ...runs import RunStore, State


class ChatApi(Api):
    name = "chat"
    output_limits = ("max_completion_tokens", "max_tokens")  # max_tokens: the older name, still sent

    def classify(self, method: str, path: str) -> Route | None:
        route = classify(method, path, self)
        return None if route.api is None else route

    def fold(self, ex: Exchange, obj: dict[str, Any], store: RunStore, seen: Seen) -> list[State]:
        kind = obj.get("object")
        chats = tracker(store)
        if kind == "chat.completion.chunk":
            changed = chats.chunk(ex.request_id, obj, seen)
        elif kind == "chat.completion":
            changed = chats.completion(ex.request_id, obj, seen)
        else:
            return []  # an error body, or an Azure filter-only chunk without `object`
        for state in changed:
            run_id = getattr(state, "run_id", None)
            if run_id:
                ex.run_id = ex.run_id or run_id
                break
        return changed

    def request_changes(self, ex: Exchange, store: RunStore, at: datetime) -> list[State]:
        chats = tracker(store)
        if ex.request_json is not None:
            turn = chats.request(ex.request_id, ex.request_json, at)
            ex.run_id = ex.run_id or turn  # known before the completion: its spans go in the turn's trace
        return chats.open_turns.sweep(at)

    def exchange_ended(self, ex: Exchange, store: RunStore, at: datetime, outcome: Outcome) -> list[State]:
        from ...exchange import Outcome as Outcomes  # at call time: proxy.exchange imports apis.base

        cut = ex.streamed and outcome is not Outcomes.COMPLETED
        return tracker(store).ended(ex.request_id, Seen(ex.request_id, ex.key_id, ex.trace_id, at), cut=cut)


def tracker(store: RunStore) -> ChatTracker:
    """The store's Chat stitcher (one per store: the app's run model)."""
    found = store.extensions.get("chat")
    if found is None:
        found = store.extensions["chat"] = ChatTracker(store)
    return found  # type: ignore[no-any-return]
