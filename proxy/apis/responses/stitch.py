"""The Responses stitcher: response objects and stream events folded into responses, items and turns.

Sans-io, beside the run model (proxy/runs.py), whose store holds it (`RunStore.extensions`). What
it folds is always a snapshot (a Response object, a whole item), so a repeated event (a resumed
stream's replay, a poll after the stream) changes nothing twice: no dedup on sequence numbers is
needed for the values, only for the rows, and those are keyed by id.

Turns (protocol-responses.md §11): a request whose new input is only tool results (function call
outputs and the like; for a stateless client, what follows the last of them: the user messages
before it are its replayed history) continues the turn of the response that asked for them, found by
`previous_response_id`, else by a `call_id` runtap saw asked for; any other request starts a turn,
whose id is its first response's. A turn is a `RunState` with `api = "responses"`: its usage the sum
of its responses', `tool_rounds` its client tool round trips, each function call a `ToolCallState`
(`requested_at` when the asking response ended, `submitted_at` when the output arrived).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ...runs import RUN_TERMINAL, OpenTurns, RunState, RunStore, Seen, State, ToolCallState
from .objects import int_of, merge, message_text, model_call, partial_items, str_of
from .states import CLIENT_CALLS, RESPONSE_TERMINAL, ResponseItemState, ResponseState


@dataclass(slots=True)
class Request:
    """What a create request said, kept until its response appears."""

    previous_response_id: str | None
    conversation_id: str | None
    results: list[tuple[int, dict[str, Any]]]
    """Tool-result input items, with their index in the input."""
    new_turn: bool
    max_output_tokens: int | None
    background: bool | None
    store: bool | None
    at: datetime


@dataclass(slots=True)
class Turn:
    run: RunState
    responses: dict[str, ResponseState] = field(default_factory=dict)


class ResponseTracker:
    def __init__(self, store: RunStore) -> None:
        self._store = store
        self.responses: OrderedDict[str, ResponseState] = OrderedDict()
        self._turns: dict[str, Turn] = {}
        self._calls: dict[str, str] = {}  # call_id (and function_call item id) -> turn id
        self._requests: dict[str, Request] = {}  # request_id -> its create request, until answered
        self._item_calls: dict[str, str] = {}  # a call item's id -> its call_id
        self._conversations: OrderedDict[str, str] = OrderedDict()  # conversation id -> its latest turn
        self.open_turns = OpenTurns(store)
        self.ended_in: set[str] = set()
        """Exchanges that saw their response reach a terminal status (their stream ended cleanly)."""

    # -- requests ----------------------------------------------------------------------------
    def request(self, request_id: str, body: dict[str, Any], at: datetime) -> None:
        """A create request the upstream accepted: its links, and the tool results it carries."""
        items = body.get("input")
        results: list[tuple[int, dict[str, Any]]] = []
        user_input = not isinstance(items, list)  # a plain string input is a user message
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if isinstance(kind, str) and (kind.endswith("_output") or kind == "mcp_approval_response"):
                results.append((index, item))
                user_input = False  # what came before is history a stateless client replays (§11)
            elif item.get("role") == "user" and item.get("content"):
                # An empty user message between a call and its output is no input (§7); one with
                # content ends the history before it: only the results after it are new.
                user_input, results = True, []
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        previous = body.get("previous_response_id")
        self._requests[request_id] = Request(
            previous if isinstance(previous, str) else None, conversation if isinstance(conversation, str) else None,
            results, user_input or not results, int_of(body.get("max_output_tokens")),
            body.get("background") if isinstance(body.get("background"), bool) else None,
            body.get("store") if isinstance(body.get("store"), bool) else None, at)

    def continued_turn(self, request_id: str) -> str | None:
        """The turn a create the upstream accepted goes on with, if runtap knows it (before its response)."""
        request = self._requests.get(request_id)
        turn = None if request is None or request.new_turn else self._continued(request)[0]
        return None if turn is None else turn.run.run_id

    def request_done(self, request_id: str) -> None:
        """Its exchange ended: what the request said is of no use to a response seen later."""
        self._requests.pop(request_id, None)

    # -- objects -----------------------------------------------------------------------------
    def response(self, obj: dict[str, Any], request_id: str, seen: Seen) -> list[State]:
        """A Response object (an event's `response`, a JSON body, a poll): the states it changed."""
        response_id = obj.get("id")
        if not isinstance(response_id, str):
            return []
        changed: list[State] = []
        state = self.responses.get(response_id)
        if state is None:
            state = self._new_response(response_id, request_id, seen, changed)
        else:
            self.responses.move_to_end(response_id)
        was_terminal = state.status in RESPONSE_TERMINAL
        merge(state, obj, seen)
        output = obj.get("output")
        for index, item in enumerate(output if isinstance(output, list) else ()):
            if isinstance(item, dict):
                changed.append(self._item(state, index, item, seen, done=True))
        if state.status in RESPONSE_TERMINAL and not was_terminal:
            if state.ended_at is None:
                state.ended_at = seen.at
            state.delta_frames = []
            changed += self._ended(state, seen)
        changed.append(state)
        changed.append(model_call(state))
        changed += self._turn_changed(state, seen)
        return changed

    def item(self, response_id: str | None, output_index: Any, item: Any, seen: Seen, *, done: bool) -> list[State]:
        """An `output_item.added` / `.done` event's item."""
        state = self.responses.get(response_id) if response_id else None
        if state is None or not isinstance(item, dict) or not isinstance(output_index, int):
            return []
        row = self._item(state, output_index, item, seen, done=done)
        if done and state.delta_frames and all(r.done_at is not None for r in state.items.values()):
            state.delta_frames = []  # every item is whole: no partial text to rebuild
        return [row]

    def failed_in_band(self, response_id: str | None, error: dict[str, Any]) -> list[State]:
        """An `error` event: the details the `response.failed` after it may not bring (§6)."""
        state = self.responses.get(response_id) if response_id else None
        if state is None:
            return []
        nested = error.get("error")
        details = nested if isinstance(nested, dict) else error
        state.error_code = str_of(details.get("code")) or state.error_code
        state.error_message = str_of(details.get("message")) or state.error_message
        return [state]

    def deltas(self, response_id: str | None, frames: bytes) -> None:
        state = self.responses.get(response_id) if response_id else None
        # Only text and argument deltas are ever read (a cut stream's partial items); reasoning,
        # audio and partial images are recorded in the stream and not held here as well.
        if state is not None and state.status not in RESPONSE_TERMINAL and (
                b'"response.output_text.delta"' in frames or b'"response.function_call_arguments.delta"' in frames):
            state.delta_frames.append(frames)

    def cut_off(self, response_id: str | None, seen: Seen) -> list[State]:
        """The stream of a response ended before its terminal event: `truncated`, with what its
        items said so far. A background response goes on upstream (a poll may still end it)."""
        state = self.responses.get(response_id) if response_id else None
        if state is None or state.status in RESPONSE_TERMINAL or state.status == "truncated" or state.background:
            return []
        changed: list[State] = []
        for item in partial_items(state):
            changed.append(item)
        state.status, state.ended_at, state.last_seen_at = "truncated", seen.at, seen.at
        state.delta_frames = []
        changed.append(state)
        changed.append(model_call(state))
        changed += self._turn_changed(state, seen)
        return changed

    # -- internals ---------------------------------------------------------------------------
    def _new_response(self, response_id: str, request_id: str, seen: Seen, changed: list[State]) -> ResponseState:
        state = self.responses[response_id] = ResponseState(response_id, key_id=seen.key_id, trace_id=seen.trace_id,
                                                            first_seen_at=seen.at)
        while len(self.responses) > self._store.max_runs:
            self._forget(self.responses.popitem(last=False)[1])
        request = self._requests.pop(request_id, None)
        if request is None:
            return state  # first seen by a poll (a restart, another proxy): no turn to stitch
        state.request_id = request_id
        state.max_output_tokens = request.max_output_tokens
        state.background, state.store = request.background, request.store
        turn, state.link_kind = (None, "none") if request.new_turn else self._continued(request)
        if turn is None:
            turn = self._turns[response_id] = Turn(RunState(response_id, api="responses", key_id=seen.key_id,
                                                            trace_id=seen.trace_id, first_seen_at=seen.at))
        else:
            turn.run.tool_rounds += 1
        if request.conversation_id:
            self._conversations[request.conversation_id] = turn.run.run_id
            self._conversations.move_to_end(request.conversation_id)
            while len(self._conversations) > self._store.max_runs:
                self._conversations.popitem(last=False)
        turn.responses[response_id] = state
        state.run_id = turn.run.run_id
        for index, item in request.results:
            changed += self._result(state, turn, index, item, request.at)
        return state

    def _continued(self, request: Request) -> tuple[Turn | None, str]:
        """The turn a request of only tool results goes on with, and how it was found (link_kind)."""
        previous = self.responses.get(request.previous_response_id) if request.previous_response_id else None
        if previous is not None and previous.run_id in self._turns:
            return self._turns[previous.run_id], "previous_response_id"
        for _, item in reversed(request.results):  # the newest round a stateless history replays
            call_id = str_of(item.get("call_id")) or str_of(item.get("approval_request_id"))
            turn_id = self._calls.get(call_id) if call_id else None
            if turn_id in self._turns:
                return self._turns[turn_id], "call_id"
        # Tool results for calls runtap never saw asked for (its memory of them was evicted, or it
        # restarted), in a conversation whose latest turn waits for its client's tools: that turn.
        turn_id = self._conversations.get(request.conversation_id) if request.conversation_id else None
        turn = self._turns.get(turn_id) if turn_id else None
        if turn is not None and turn.run.status == "requires_action":
            return turn, "conversation"
        return None, "none"

    def _result(self, state: ResponseState, turn: Turn, index: int, item: dict[str, Any], at: datetime) -> list[State]:
        call_id = str_of(item.get("call_id")) or str_of(item.get("approval_request_id"))
        item_id = str_of(item.get("id")) or f"{state.response_id}/input/{index}"
        output = item.get("output")
        text = output if isinstance(output, str) or output is None else orjson.dumps(output).decode()
        row = ResponseItemState(item_id, state.response_id, "input", None, str_of(item.get("type")),
                                str_of(item.get("status")), call_id=call_id, output=text, added_at=at, done_at=at)
        changed: list[State] = [row]
        call = turn.run.tool_calls.get(call_id) if call_id else None
        if call is None and call_id in self._item_calls:  # a client that sent the item id as call_id (§7)
            call = turn.run.tool_calls.get(self._item_calls[call_id])
        if call is not None:
            call.output, call.submitted_at = text, call.submitted_at or at
            changed.append(call)
        return changed

    def _item(self, state: ResponseState, index: int, item: dict[str, Any], seen: Seen, *,
              done: bool) -> ResponseItemState:
        item_id = str_of(item.get("id")) or f"{state.response_id}/output/{index}"
        row = state.items.get(index)
        if row is None or row.item_id != item_id:
            row = state.items[index] = ResponseItemState(item_id, state.response_id, "output", index, added_at=seen.at)
        row.type = str_of(item.get("type")) or row.type
        row.status = str_of(item.get("status")) or row.status
        row.role = str_of(item.get("role")) or row.role
        row.call_id = str_of(item.get("call_id")) or row.call_id
        row.name = str_of(item.get("name")) or row.name
        if isinstance(item.get("arguments"), str) and (done or item["arguments"]):
            row.arguments = item["arguments"]
        text = message_text(item.get("content"))
        if text or (done and row.text is None and row.type == "message"):
            row.text = text
        if done and row.done_at is None:
            row.done_at = seen.at
        call_id = row.item_id if row.type == "mcp_approval_request" else row.call_id
        if row.type in CLIENT_CALLS and call_id and call_id not in state.calls and done:
            state.calls.append(call_id)
        return row

    def _ended(self, state: ResponseState, seen: Seen) -> list[State]:
        """The response ended: its function calls are asked for now (the client runs them next)."""
        turn = self._turns.get(state.run_id) if state.run_id else None
        if turn is None:
            return []
        changed: list[State] = []
        for row in state.items.values():
            call_id = row.item_id if row.type == "mcp_approval_request" else row.call_id
            if row.type not in CLIENT_CALLS or not call_id:
                continue
            call = turn.run.tool_calls.get(call_id)
            if call is None:
                kind = "function" if row.type == "function_call" else row.type
                call = turn.run.tool_calls[call_id] = ToolCallState(call_id, turn.run.run_id, type=kind)
            call.name, call.arguments = row.name, row.arguments
            call.requested_at = call.requested_at or seen.at
            call.call_index = row.output_index
            call.step_id = state.response_id
            self._calls[call_id] = self._calls[row.item_id] = turn.run.run_id
            self._item_calls[row.item_id] = call_id
            changed.append(call)
        return changed

    def _turn_changed(self, state: ResponseState, seen: Seen) -> list[State]:
        turn = self._turns.get(state.run_id) if state.run_id else None
        if turn is None:
            return []
        run = turn.run
        run.last_seen_at = seen.at
        # The turn is where its latest response is: a late poll of an earlier one changes its own
        # row and the summed usage, never the turn's status.
        latest = next(reversed(turn.responses.values()))
        run.model = latest.model or run.model
        for name, field_name in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"),
                                 ("total_tokens", "total_tokens")):
            values = [getattr(r, field_name) for r in turn.responses.values() if getattr(r, field_name) is not None]
            setattr(run, name, sum(values) if values else None)
        status = latest.status
        if status == "completed" and any(call not in self._answered(turn) for call in latest.calls):
            status = "requires_action"  # the client runs its tools next (§7): the turn goes on
        run.status = status
        run.incomplete_reason = latest.incomplete_reason
        run.last_error_code, run.last_error_message = latest.error_code, latest.error_message
        # A turn is runtap's, not an upstream object: its times are runtap's clock (first_seen_at to
        # when runtap saw it end), as a Chat turn's; the responses keep their own timestamps as data.
        ended = status in RUN_TERMINAL or status == "truncated"
        run.ended_at = (run.ended_at or seen.at) if ended else None
        self._store.adopt(run)
        self.open_turns.touch(run, seen.at)
        return [run]

    def _answered(self, turn: Turn) -> set[str]:
        return {call_id for call_id, call in turn.run.tool_calls.items() if call.submitted_at is not None}

    def _forget(self, state: ResponseState) -> None:
        for row in state.items.values():
            self._calls.pop(row.item_id, None)
            self._item_calls.pop(row.item_id, None)
        turn = self._turns.get(state.run_id) if state.run_id else None
        if turn is not None:
            turn.responses.pop(state.response_id, None)
            if not turn.responses:
                self._turns.pop(turn.run.run_id, None)
                for call_id in turn.run.tool_calls:
                    self._calls.pop(call_id, None)
