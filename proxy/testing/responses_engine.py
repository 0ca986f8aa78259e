"""The fake's server-side Responses state: stored responses, chains, background progress.

Like the Assistants engine, a response is compiled up front into its whole event list
(``ResponseRecord.pending``); applying an event moves it to ``log`` and, for lifecycle events,
replaces the stored Response. A stream applies and writes every event; a background response
that nobody streams advances one lifecycle phase per ``GET`` (queued -> in_progress -> terminal,
protocol-responses.md §5); ``log`` is what a ``starting_after`` resume replays. If a stream dies
the rest is applied anyway: the response carries on server-side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.testing.conversations import Conversations
from proxy.testing.engine import ApiError
from proxy.testing.responses_events import EventCompiler
from proxy.testing.responses_objects import (
    HEX,
    TERMINAL_EVENTS,
    dated_model,
    estimate_tokens,
    hex_id,
    normalise_input,
    response_object,
)
from proxy.testing.responses_scripts import ResponseScript
from proxy.testing.streams import Ids, Json

TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


@dataclass
class ResponseRecord:
    response: Json
    input_items: list[Json]
    prefix: list[Json]
    """Items the server prepended: the ``previous_response_id`` chain or the conversation."""
    conversation_id: str | None = None
    pending: deque[Json] = field(default_factory=deque)
    log: list[Json] = field(default_factory=list)
    streaming: bool = False
    """A stream is applying this response's events (polls then leave it alone)."""
    deleted: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever an event is applied or the response is cancelled (wakes resumed streams)."""

    @property
    def id(self) -> str:
        return str(self.response["id"])

    @property
    def status(self) -> str:
        return str(self.response["status"])

    @property
    def background(self) -> bool:
        return bool(self.response["background"])

    @property
    def stored(self) -> bool:
        return self.response["store"] is not False and not self.deleted

    def context(self) -> list[Json]:
        """What a follow-up with ``previous_response_id`` continues from (§7 way 2)."""
        return [*self.prefix, *self.input_items, *self.response["output"]]


class ResponsesEngine:
    def __init__(self, ids: Ids, clock: Callable[[], int], conversations: Conversations,
                 max_records: int | None = None) -> None:
        self.ids, self.clock, self.conversations, self.max_records = ids, clock, conversations, max_records
        self.records: dict[str, ResponseRecord] = {}

    # -- creating -----------------------------------------------------------------------------------
    def create(self, body: Json, script: ResponseScript, *, azure: bool, stream: bool) -> ResponseRecord:
        """Validate like the service (400s before any event, §6) and compile the whole response."""
        tail = self.ids.chars(16, HEX)
        prefix, conversation_id = self.prefix(body)
        input_items = normalise_input(self.ids, tail, body.get("input"))
        check_tool_outputs([*prefix, *input_items])
        background = bool(body.get("background"))
        base = response_object(
            response_id=hex_id(self.ids, "resp", tail), created_at=self.clock(),
            status="queued" if background else "in_progress", body=body,
            model=script.model or dated_model(str(body["model"]), azure=azure), conversation_id=conversation_id)
        include_obfuscation = (body.get("stream_options") or {}).get("include_obfuscation", True)
        # §2: padding only in live (non-background) api.openai.com streams; never on Azure.
        obfuscate = stream and not background and not azure and include_obfuscation is not False
        input_tokens = script.input_tokens
        if input_tokens is None:
            input_tokens = estimate_tokens([*prefix, *input_items], body.get("instructions"))
        events = EventCompiler(self.ids, tail, self.clock, obfuscate=obfuscate).compile(
            script, base, body, input_tokens)
        rec = ResponseRecord(response=base, input_items=input_items, prefix=prefix,
                             conversation_id=conversation_id, pending=deque(events))
        self.records[rec.id] = rec
        if self.max_records is not None:
            while len(self.records) > self.max_records:  # a served fake must not grow forever
                self.records.pop(next(iter(self.records)))
        return rec

    def prefix(self, body: Json) -> tuple[list[Json], str | None]:
        """The stored items a request continues (§7): a chain or a conversation, never both."""
        previous, conversation = body.get("previous_response_id"), body.get("conversation")
        if previous is not None and conversation is not None:
            raise ApiError(400, "Mutually exclusive parameters: Ensure you are only providing one of: "
                                "'previous_response_id' or 'conversation'.", code="mutually_exclusive_parameters")
        if previous is not None:
            rec = self.records.get(previous) if isinstance(previous, str) else None
            if rec is None or not rec.stored:  # §4: store: false responses cannot be continued
                raise ApiError(400, f"Previous response with id '{previous}' not found.",
                               param="previous_response_id", code="previous_response_not_found")
            return rec.context(), None
        if conversation is not None:
            conv_id = conversation.get("id") if isinstance(conversation, dict) else conversation
            if not isinstance(conv_id, str):
                raise ApiError(400, "Invalid type for 'conversation': expected a string or an object with "
                                    "'id'.", param="conversation", code="invalid_type")
            return self.conversations.items_of(conv_id), conv_id
        return [], None

    def count_input_tokens(self, body: Json) -> int:
        """``POST /responses/input_tokens``: the estimate a create with this body would report."""
        prefix, _ = self.prefix(body)
        items = normalise_input(self.ids, self.ids.chars(16, HEX), body.get("input"))
        return estimate_tokens([*prefix, *items], body.get("instructions"))

    # -- looking up, cancelling, deleting ------------------------------------------------------------
    def get(self, response_id: str) -> ResponseRecord:
        rec = self.records.get(response_id)
        if rec is None or not rec.stored:
            raise ApiError(404, f"Response with id '{response_id}' not found.")
        return rec

    def cancel(self, rec: ResponseRecord) -> None:
        """§5: background only; ``cancelled`` with ``output: []``, ``usage: null``,
        ``completed_at: null``; there is no cancelled *event*, so an open stream just ends."""
        if not rec.background:
            raise ApiError(400, "Only responses created with the `background` parameter set to `true` can be "
                                "cancelled.", param="response_id")
        if rec.status == "cancelled":
            return  # idempotent
        if rec.status in TERMINAL_STATUSES:
            raise ApiError(400, f"Cannot cancel a response with status '{rec.status}'.", param="response_id")
        rec.pending.clear()
        rec.response = {**rec.response, "status": "cancelled", "output": [], "usage": None, "completed_at": None}
        rec.changed.set()

    def delete(self, rec: ResponseRecord) -> Json:
        rec.deleted = True
        return {"id": rec.id, "object": "response.deleted", "deleted": True}

    # -- delivery --------------------------------------------------------------------------------------
    def pop(self, rec: ResponseRecord) -> Json | None:
        if not rec.pending:
            return None
        ev = rec.pending.popleft()
        rec.log.append(ev)
        if "response" in ev:
            rec.response = ev["response"]
            if ev["type"] in TERMINAL_EVENTS and ev["type"] != "response.failed" and rec.conversation_id:
                # §7 way 3: input and output items join the conversation once the response completes
                self.conversations.append(rec.conversation_id, [*rec.input_items, *rec.response["output"]])
        rec.changed.set()
        return ev

    def advance(self, rec: ResponseRecord, until: str | None = None) -> None:
        """Apply events up to and including the next lifecycle event (or the named one)."""
        while (ev := self.pop(rec)) is not None:
            if ev["type"] == until or (until is None and "response" in ev):
                return

    def poll(self, rec: ResponseRecord) -> None:
        """One ``GET`` of a background response: one phase on, unless a stream delivers it."""
        if rec.background and not rec.streaming and rec.pending:
            self.advance(rec)

    def drain(self, rec: ResponseRecord) -> None:
        while self.pop(rec) is not None:
            pass


def check_tool_outputs(context: list[Json]) -> None:
    """Every ``function_call`` in the context needs a ``function_call_output`` with its
    ``call_id``, and every output a call (§7; messages as the live service words them)."""
    calls: dict[Any, bool] = {}  # call_id -> answered, in order (the first unanswered is named)
    for item in context:
        if item.get("type") == "function_call":
            calls.setdefault(item.get("call_id"), False)
        elif item.get("type") == "function_call_output":
            if item["call_id"] not in calls:
                raise ApiError(400, f"No tool call found for function call output with call_id {item['call_id']}.",
                               param="input")
            calls[item["call_id"]] = True
    for call_id, answered in calls.items():
        if not answered:
            raise ApiError(400, f"No tool output found for function call {call_id}.", param="input")
