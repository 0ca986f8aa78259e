"""The Responses API on the core's interface (apis/base.py): routes.py's routes, stitch.py's state.

What is parsed live: the response objects (created, in_progress, the terminal one), whole items
(`output_item.added` / `.done`) and the in-band `error` frame. Every delta (text, arguments,
reasoning, audio, partial images) is kept as bytes only, for a stream that breaks off.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..base import Api, Route
from .routes import RouteKind, classify
from .states import RESPONSE_TERMINAL
from .stitch import ResponseTracker

if TYPE_CHECKING:
    from ...exchange import Exchange, Outcome
    from ...runs import RunStore, Seen, State

DELTA_EVENTS = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta",
    "response.reasoning_summary_text.delta", "response.reasoning_text.delta", "response.audio.delta",
    "response.audio.transcript.delta", "response.code_interpreter_call_code.delta",
    "response.mcp_call_arguments.delta", "response.custom_tool_call_input.delta",
    "response.image_generation_call.partial_image", "response.shell_call_command.delta",
    "response.shell_call_output_content.delta",
})
_ITEM_EVENTS = {"response.output_item.added": False, "response.output_item.done": True}


class ResponsesApi(Api):
    name = "responses"
    delta_events = DELTA_EVENTS

    stream_end = "a terminal event (response.completed, .incomplete, .failed)"

    def stream_ended(self, ex: Exchange, store: RunStore) -> bool:
        # No [DONE] on a Responses stream (§2): it ends right after its terminal event. A background
        # response cancelled while streamed ends its stream with no terminal event (a §12 unknown).
        state = tracker(store).responses.get(ex.response_id) if ex.response_id else None
        return state is not None and state.status in RESPONSE_TERMINAL

    def classify(self, method: str, path: str) -> Route | None:
        route = classify(method, path, self)
        return None if route.api is None else route

    def deltas(self, ex: Exchange, frames: bytes, store: RunStore) -> bool:
        tracker(store).deltas(ex.response_id, frames)
        return True

    def fold(self, ex: Exchange, obj: dict[str, Any], store: RunStore, seen: Seen) -> list[State]:
        responses = tracker(store)
        kind = obj.get("type")
        if kind is None:  # a JSON body: a Response object (create, poll, cancel), or anything else
            return self._response(ex, obj, responses, seen) if obj.get("object") == "response" else []
        response = obj.get("response")
        if isinstance(response, dict):  # response.created, .in_progress, .completed, .failed, ...
            return self._response(ex, response, responses, seen)
        if kind in _ITEM_EVENTS:
            return responses.item(ex.response_id, obj.get("output_index"), obj.get("item"), seen,
                                  done=_ITEM_EVENTS[kind])
        if kind == "error":
            return responses.failed_in_band(ex.response_id, obj)
        return []  # unknown and part-level events: recorded raw, nothing to fold

    def request_changes(self, ex: Exchange, store: RunStore, at: datetime) -> list[State]:
        if ex.route.kind == RouteKind.CREATE and ex.request_json is not None:
            tracker(store).request(ex.request_id, ex.request_json, at)
        return []

    def exchange_ended(self, ex: Exchange, store: RunStore, at: datetime, outcome: Outcome) -> list[State]:
        responses = tracker(store)
        responses.request_done(ex.request_id)  # a create that never showed its response is not kept
        if not ex.streamed or ex.response_id is None:
            return []
        from ...runs import Seen  # runtime import: runs imports nothing of the APIs

        return responses.cut_off(ex.response_id, Seen(ex.request_id, ex.key_id, ex.trace_id, at))

    @staticmethod
    def _response(ex: Exchange, obj: dict[str, Any], responses: ResponseTracker, seen: Seen) -> list[State]:
        changed = responses.response(obj, ex.request_id, seen)
        response_id = obj.get("id")
        if isinstance(response_id, str):
            ex.response_id = ex.response_id or response_id
            state = responses.responses.get(response_id)
            if state is not None and state.run_id is not None:
                ex.run_id = ex.run_id or state.run_id
        return changed


def tracker(store: RunStore) -> ResponseTracker:
    """The store's Responses stitcher (one per store: the app's run model)."""
    found = store.extensions.get("responses")
    if found is None:
        found = store.extensions["responses"] = ResponseTracker(store)
    return found  # type: ignore[no-any-return]
