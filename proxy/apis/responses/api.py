"""The Responses API on the core's interface (apis/base.py): routes.py's routes, stitch.py's state.

What is parsed live: the response objects (created, in_progress, the terminal one), whole items
(`output_item.added` / `.done`) and the in-band `error` frame. Every delta (text, arguments,
reasoning, audio, partial images) is kept as bytes only, for a stream that breaks off.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from ...runs import Seen
from ..base import Api, Route
from .routes import RouteKind, classify, socket_create
from .states import RESPONSE_TERMINAL
from .stitch import ResponseTracker

if TYPE_CHECKING:
    from ...exchange import Exchange, Outcome
    from ...runs import RunStore, State

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
    output_limits = ("max_output_tokens",)  # reasoning included (§4); the input has no bound
    delta_events = DELTA_EVENTS

    stream_end = "a terminal event (response.completed, .incomplete, .failed)"

    def stream_ended(self, ex: Exchange, store: RunStore) -> bool:
        # No [DONE] on a Responses stream (§2): it ends right after its terminal event. A background
        # response cancelled while streamed ends its stream with no terminal event (a §12 unknown).
        # This exchange must have seen it: a resume cut short of a response that ended long ago is cut.
        return ex.request_id in tracker(store).ended_in

    def classify(self, method: str, path: str) -> Route | None:
        route = classify(method, path, self)
        return None if route.api is None else route

    def socket_message(self, socket: Route, obj: dict[str, Any]) -> Route | None:
        # The WebSocket mode (protocol-responses.md §1): a `response.create` carries the create's
        # fields and is answered with the same events an SSE stream carries, one frame each.
        return socket_create(socket, self) if obj.get("type") == "response.create" else None

    def deltas(self, ex: Exchange, frames: bytes, store: RunStore) -> bool:
        tracker(store).deltas(ex.response_id, frames)
        return True

    def fold(self, ex: Exchange, obj: dict[str, Any], store: RunStore, seen: Seen) -> list[State]:
        responses = tracker(store)
        kind = obj.get("type")
        if kind is not None and not isinstance(kind, str):
            return []  # not an event of this API: recorded raw, nothing to fold
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
        if kind in DELTA_EVENTS:
            # A stream framed otherwise than the service frames it (comments, data-only frames) is
            # parsed frame by frame: its deltas come here instead of as bytes to `deltas`.
            responses.deltas(ex.response_id, b"data: " + orjson.dumps(obj) + b"\n\n")
        return []  # unknown and part-level events: recorded raw, nothing to fold

    def request_changes(self, ex: Exchange, store: RunStore, at: datetime) -> list[State]:
        responses = tracker(store)
        if ex.route.kind == RouteKind.CREATE and ex.request_json is not None:
            responses.request(ex.request_id, ex.request_json, at)
            # Known before the response: its spans go in the turn's trace, its rows carry it.
            ex.run_id = ex.run_id or responses.continued_turn(ex.request_id)
            return responses.open_turns.sweep(at)
        elif ex.response_id is not None:  # a poll, resume or cancel of a response runtap knows
            state = responses.responses.get(ex.response_id)
            if state is not None and state.run_id is not None:
                ex.run_id = ex.run_id or state.run_id
        return []

    def exchange_ended(self, ex: Exchange, store: RunStore, at: datetime, outcome: Outcome) -> list[State]:
        responses = tracker(store)
        responses.request_done(ex.request_id)  # a create that never showed its response is not kept
        responses.ended_in.discard(ex.request_id)
        if not ex.streamed or ex.response_id is None:
            return []
        return responses.cut_off(ex.response_id, Seen(ex.request_id, ex.key_id, ex.trace_id, at))

    @staticmethod
    def _response(ex: Exchange, obj: dict[str, Any], responses: ResponseTracker, seen: Seen) -> list[State]:
        changed = responses.response(obj, ex.request_id, seen)
        if obj.get("status") in RESPONSE_TERMINAL:
            responses.ended_in.add(ex.request_id)
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
