"""What a Response object and its items say, read into the recorded states (states.py).

Sans-io helpers of the stitcher (stitch.py): a Response object merged into its `ResponseState`
(every value from a whole snapshot, so a repeated one changes nothing twice), the `ModelCall` view
budgets and spans read, the partial items of a stream cut short, and the value checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from ...runs import ModelCall, Seen
from .states import BUILTIN_TOOLS, CLIENT_CALLS, RESPONSE_TERMINAL, ResponseItemState, ResponseState


def model_call(state: ResponseState) -> ModelCall:
    """The response as budgets and spans see it (runs.ModelCall)."""
    status = state.status
    reason = None
    if status == "completed":
        reason = "tool_calls" if state.calls else "stop"
    elif status == "incomplete":
        reason = "length" if state.incomplete_reason == "max_output_tokens" else state.incomplete_reason
    tools = tuple((row.item_id, row.type, row.added_at, row.done_at) for row in state.items.values()
                  if row.type is not None and row.type not in CLIENT_CALLS and row.type in BUILTIN_TOOLS)
    texts = [row.text for row in state.items.values() if row.type == "message" and row.text]
    return ModelCall(state.response_id, state.model, status in RESPONSE_TERMINAL, state.input_tokens,
                     state.output_tokens, state.total_tokens, status, state.cached_tokens, state.reasoning_tokens,
                     reason, state.error_code, state.error_message, state.conversation_id, tools,
                     "".join(texts) if texts else None)


def merge(state: ResponseState, obj: dict[str, Any], seen: Seen) -> None:
    state.last_seen_at = seen.at
    status = str_of(obj.get("status"))
    if status and not (state.status in RESPONSE_TERMINAL and status not in RESPONSE_TERMINAL):
        state.status = status  # a replayed early snapshot (a resume from the start) never reopens it
    state.model = str_of(obj.get("model")) or state.model
    state.previous_response_id = str_of(obj.get("previous_response_id")) or state.previous_response_id
    conversation = obj.get("conversation")
    state.conversation_id = str_of(conversation.get("id") if isinstance(conversation, dict) else conversation) \
        or state.conversation_id
    if isinstance(obj.get("background"), bool):
        state.background = obj["background"]
    if isinstance(obj.get("store"), bool):
        state.store = obj["store"]
    state.service_tier = str_of(obj.get("service_tier")) or state.service_tier  # the terminal one wins (§4)
    state.created_at = ts_of(obj.get("created_at")) or state.created_at
    state.ended_at = ts_of(obj.get("completed_at")) or state.ended_at
    state.max_output_tokens = int_of(obj.get("max_output_tokens")) or state.max_output_tokens
    details = obj.get("incomplete_details")
    if isinstance(details, dict):
        state.incomplete_reason = str_of(details.get("reason")) or state.incomplete_reason
    error = obj.get("error")
    if isinstance(error, dict):
        state.error_code = str_of(error.get("code")) or state.error_code
        state.error_message = str_of(error.get("message")) or state.error_message
    usage = obj.get("usage")
    if isinstance(usage, dict):
        state.input_tokens, state.output_tokens = int_of(usage.get("input_tokens")), int_of(usage.get("output_tokens"))
        state.total_tokens = int_of(usage.get("total_tokens"))
        input_details, output_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
        if isinstance(input_details, dict):
            state.cached_tokens = int_of(input_details.get("cached_tokens"))
            state.cache_write_tokens = int_of(input_details.get("cache_write_tokens"))
        if isinstance(output_details, dict):
            state.reasoning_tokens = int_of(output_details.get("reasoning_tokens"))


_PARTIAL = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})


def partial_items(state: ResponseState) -> list[ResponseItemState]:
    """Items not done when the stream broke off, with the text and arguments their deltas gave."""
    pieces: dict[str, list[str]] = {}
    for frames in state.delta_frames:
        for line in frames.split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            try:
                obj = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                continue
            if (isinstance(obj, dict) and obj.get("type") in _PARTIAL and isinstance(obj.get("item_id"), str)
                    and isinstance(obj.get("delta"), str)):
                pieces.setdefault(obj["item_id"], []).append(obj["delta"])
    open_items = [row for row in state.items.values() if row.done_at is None]
    for row in open_items:
        joined = "".join(pieces.get(row.item_id, ()))
        if row.type == "function_call":
            row.arguments = joined
        elif row.type == "message":
            row.text = joined
        row.status = "incomplete"
    return open_items


def message_text(content: Any) -> str | None:
    if not isinstance(content, list):
        return None
    parts = [part["text"] for part in content
             if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)]
    return "".join(parts) if parts else None


def str_of(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def int_of(value: Any) -> int | None:
    return value if type(value) is int else None


def ts_of(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # not a time: kept in the raw JSON only
        return None
