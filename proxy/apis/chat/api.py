"""Chat Completions on the core's interface (apis/base.py): routes.py's routes, stitch.py's turns.

A Chat stream's frames are data-only (`data: {chunk}`, then `data: [DONE]`, §9): with no event
name to tell a delta by, a chunk is a delta when its data has the shape of OpenAI's content chunk
(`delta_data`, matched in C by frames.py): one choice, index 0, whose delta is only `content`,
no finish reason. Those are kept as bytes and read when the answer's text is needed (stitch.py);
every other chunk (the first, tool-call fragments, the finish, usage, Azure's other key order) is
parsed and folded.
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


# The start of a content chunk as api.openai.com writes it: `{"id":...,"object":"chat.completion.chunk",
# "created":...,"model":...,["service_tier":...,]["system_fingerprint":...,]"choices":[{"index":0,
# "delta":{"content":"..."},"logprobs":null,"finish_reason":null}]`. No lazy or nested repetition:
# frames.py tries it at every frame start, so it must fail or match in one pass.
CONTENT_CHUNK = (rb'\{"id":"[^"\n]*","object":"chat\.completion\.chunk","created":\d+,"model":"[^"\n]*",'
                 rb'(?:"service_tier":"[^"\n]*",)?(?:"system_fingerprint":(?:"[^"\n]*"|null),)?'
                 rb'"choices":\[\{"index":0,"delta":\{"content":"(?:[^"\\\n]|\\.)*+"\},"logprobs":null,'
                 rb'"finish_reason":null\}\]')


class ChatApi(Api):
    name = "chat"
    delta_data = CONTENT_CHUNK
    output_limits = ("max_completion_tokens", "max_tokens")  # max_tokens: the older name, still sent

    def classify(self, method: str, path: str) -> Route | None:
        route = classify(method, path, self)
        return None if route.api is None else route

    def deltas(self, ex: Exchange, frames: bytes, store: RunStore) -> bool:
        return tracker(store).deltas(ex.request_id, frames)

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
