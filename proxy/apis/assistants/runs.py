"""Run, step, tool-call and message state, stitched across every exchange that touches a run.

Sans-io: `RunTracker.apply()` takes a parsed object seen in an SSE event or a JSON body and
updates in-memory state; it never does I/O. One run spans several exchanges (protocol.md §1.3):
the stream that creates it, polls (`GET .../runs/{id}`), `submit_tool_outputs` continuations and
steps listings; all of them land on one `RunState`.

Rules this module owns (issue #3):
- A run's status is the run object's `status` field, never the event name (an `incomplete` run
  has been seen under `thread.run.completed`).
- Transitions follow the tables below; a snapshot that would leave a terminal status is stale
  (a poll answered before the stream's end arrived) and is not applied.
- Usage is a cumulative snapshot (protocol.md §2.5): the latest run usage replaces the previous
  one, it is never added, so a run is counted once however many exchanges it spans.
- The states themselves, and their bounded store, are the API-neutral run model (proxy/runs.py).
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from sys import intern
from typing import Any

import orjson

from ...runs import (
    RUN_TERMINAL,
    STEP_TERMINAL,
    MessageState,
    RunState,
    RunStore,
    Seen,
    State,
    StepState,
    ToolCallState,
)

__all__ = ["RUN_TERMINAL", "RUN_TRANSITIONS", "STEP_TERMINAL", "STEP_TRANSITIONS", "MessageState", "RunState",
           "RunTracker", "Seen", "State", "StepState", "ToolCallState"]

_RUN_ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")
# Rule 1: every transition a run may make. Terminal statuses have no exits.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({*_RUN_ACTIVE, *RUN_TERMINAL}),
    "in_progress": frozenset({*_RUN_ACTIVE, *RUN_TERMINAL}),
    # requires_action → queued is the submit_tool_outputs continuation.
    "requires_action": frozenset({*_RUN_ACTIVE, *RUN_TERMINAL}),
    "cancelling": frozenset({"cancelling", *RUN_TERMINAL}),
    **{status: frozenset() for status in RUN_TERMINAL},
}
# Rule 2: every transition a run step may make.
STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "in_progress": frozenset({"in_progress", *STEP_TERMINAL}),
    **{status: frozenset() for status in STEP_TERMINAL},
}


def _ts(value: Any) -> datetime | None:
    if type(value) is int:  # the API's timestamps: the same few repeat in every snapshot of a run
        return _ts_of_int(value)
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


@functools.lru_cache(maxsize=4096)
def _ts_of_int(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _one(value: Any) -> Any:
    """A status, type, role or model as the one string object of its value: each parse makes new
    copies, kept for up to max_runs runs (issue #3). Only values of small sets: not ids unique to a
    run (the intern table's entries would cost about what sharing them saves), nor assistant ids
    (CPython 3.12 keeps interned strings for the life of the process, and tenants are unbounded)."""
    return intern(value) if type(value) is str else value


def _moves(table: dict[str, frozenset[str]], old: str | None, new: Any) -> bool:
    if not isinstance(new, str):
        return False
    return old is None or new == old or new in table.get(old, frozenset({new}))


class RunTracker(RunStore):
    """The Assistants state machine over the run model: folds run, step and message objects in."""

    # -- objects -----------------------------------------------------------------------------
    def apply(self, obj: dict[str, Any], seen: Seen) -> list[State]:
        """Fold one object into the state; returns the states whose snapshot changed."""
        kind = obj.get("object")
        if kind == "thread.run":
            return self._apply_run(obj, seen)
        if kind == "thread.run.step":
            return self._apply_step(obj, seen)
        if kind == "thread.message":
            return [self._apply_message(obj)] if isinstance(obj.get("id"), str) else []
        if kind == "thread.run.step.delta":
            self._apply_step_delta(obj, seen.request_id)
        elif kind == "thread.message.delta" and isinstance(obj.get("id"), str):
            self.message_delta(obj["id"], b"data: " + orjson.dumps(obj) + b"\n\n", seen.request_id)
        elif kind == "list" and isinstance(obj.get("data"), list):
            changed: list[State] = []
            for item in obj["data"]:
                if isinstance(item, dict):
                    changed.extend(self.apply(item, seen))
            return changed
        return []

    def _apply_run(self, obj: dict[str, Any], seen: Seen) -> list[State]:
        run_id = obj.get("id")
        if not isinstance(run_id, str):
            return []
        run = self.run(run_id)
        changed: list[State] = [run]
        if run.first_seen_at is None:
            run.first_seen_at = seen.at
        run.last_seen_at = seen.at
        if run.last_request_id != seen.request_id:
            run.last_request_id = seen.request_id
            run.request_count += 1
        run.key_id = run.key_id or seen.key_id
        run.trace_id = run.trace_id or seen.trace_id
        run.thread_id = obj.get("thread_id") or run.thread_id
        run.assistant_id = obj.get("assistant_id") or run.assistant_id
        run.model = _one(obj.get("model")) or run.model
        run.created_at = _ts(obj.get("created_at")) or run.created_at
        run.started_at = _ts(obj.get("started_at")) or run.started_at
        run.expires_at = _ts(obj.get("expires_at")) or run.expires_at
        run.max_prompt_tokens = obj.get("max_prompt_tokens") or run.max_prompt_tokens
        run.max_completion_tokens = obj.get("max_completion_tokens") or run.max_completion_tokens
        status = obj.get("status")
        if not _moves(RUN_TRANSITIONS, run.status, status):
            # Stale snapshot: the run already ended. Its usage is stale too (a requires_action poll
            # answered before the end but seen after it would roll the final count back).
            return changed
        usage = obj.get("usage")
        if isinstance(usage, dict):
            run.prompt_tokens = usage.get("prompt_tokens", run.prompt_tokens)
            run.completion_tokens = usage.get("completion_tokens", run.completion_tokens)
            run.total_tokens = usage.get("total_tokens", run.total_tokens)
        if status == "requires_action" and run.status != "requires_action":
            changed.extend(self._required_action(run, obj, seen.at))
        run.status = _one(status)
        error = obj.get("last_error")
        if isinstance(error, dict):
            run.last_error_code = error.get("code")
            run.last_error_message = error.get("message")
        details = obj.get("incomplete_details")
        if isinstance(details, dict):
            run.incomplete_reason = details.get("reason")
        if run.terminal and run.ended_at is None:
            run.ended_at = (
                _ts(obj.get("completed_at")) or _ts(obj.get("failed_at"))
                or _ts(obj.get("cancelled_at")) or seen.at
            )
        return changed

    def _required_action(self, run: RunState, obj: dict[str, Any], at: datetime) -> list[State]:
        action = obj.get("required_action") or {}
        calls = (action.get("submit_tool_outputs") or {}).get("tool_calls") or []
        changed: list[State] = []
        ids = frozenset(c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str))
        if ids and not ids <= run.counted_call_ids:
            # A stale requires_action snapshot of an earlier round, seen again, is not a new round.
            run.tool_rounds += 1
            run.counted_call_ids |= ids
        if ids:
            run.pending_call_ids = ids
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                continue
            state = self._tool_call(run, call["id"])
            state.type = call.get("type") or state.type
            function = call.get("function") or {}
            state.name = function.get("name") or state.name
            state.arguments = function.get("arguments", state.arguments)
            state.complete = True
            state.requested_at = state.requested_at or at
            changed.append(state)
        return changed

    def _apply_step(self, obj: dict[str, Any], seen: Seen) -> list[State]:
        step_id = obj.get("id")
        if not isinstance(step_id, str):
            return []
        step = self._step(step_id, obj.get("run_id"))
        step.run_id = step.run_id or obj.get("run_id")
        step.thread_id = obj.get("thread_id") or step.thread_id
        step.type = _one(obj.get("type")) or step.type
        step.first_seen_at = step.first_seen_at or seen.at
        step.last_seen_at = seen.at
        step.created_at = _ts(obj.get("created_at")) or step.created_at
        changed: list[State] = [step]
        status = obj.get("status")
        if _moves(STEP_TRANSITIONS, step.status, status):
            step.status = _one(status)
            if status in STEP_TERMINAL and step.ended_at is None:
                step.ended_at = (
                    _ts(obj.get("completed_at")) or _ts(obj.get("failed_at"))
                    or _ts(obj.get("cancelled_at")) or _ts(obj.get("expired_at")) or seen.at
                )
        usage = obj.get("usage")
        if isinstance(usage, dict):
            step.prompt_tokens = usage.get("prompt_tokens")
            step.completion_tokens = usage.get("completion_tokens")
            step.total_tokens = usage.get("total_tokens")
        error = obj.get("last_error")
        if isinstance(error, dict):
            step.last_error_code = error.get("code")
            step.last_error_message = error.get("message")
        details = obj.get("step_details") or {}
        creation = details.get("message_creation")
        if isinstance(creation, dict):
            step.message_id = creation.get("message_id") or step.message_id
        for index, call in enumerate(details.get("tool_calls") or ()):
            if isinstance(call, dict):
                changed.append(self._apply_call_snapshot(step, call, index, seen.at))
        return changed

    def _apply_call_snapshot(
        self, step: StepState, call: dict[str, Any], index: int, at: datetime
    ) -> ToolCallState:
        run = self.run(step.run_id) if step.run_id else None
        call_id = call.get("id") or f"{step.step_id}#{index}"
        state = self._tool_call(run, call_id) if run else ToolCallState(call_id, None)
        state.step_id = step.step_id
        state.call_index = index
        step.calls_by_index[index] = state
        _merge_call(state, call)
        if state.type != "function":
            state.requested_at = state.requested_at or at
        return state

    def _apply_step_delta(self, obj: dict[str, Any], request_id: str) -> None:
        step = self._steps.get(obj.get("id"))  # type: ignore[arg-type]  # a str or a miss
        details = ((obj.get("delta") or {}).get("step_details")) or {}
        if step is None or step.status in STEP_TERMINAL or not isinstance(details.get("tool_calls"), list):
            # A step that ended has its calls' full snapshot: a late fragment would be appended to
            # the complete arguments (a steps poll seen before the stream's deltas).
            return
        for fragment in details["tool_calls"]:
            if not isinstance(fragment, dict) or not isinstance(fragment.get("index"), int):
                continue
            index = fragment["index"]
            state = step.calls_by_index.get(index)
            if state is None:
                call_id = fragment.get("id") or f"{step.step_id}#{index}"
                run = self.run(step.run_id) if step.run_id else None
                state = self._tool_call(run, call_id) if run else ToolCallState(call_id, None)
                state.step_id, state.call_index = step.step_id, index
                step.calls_by_index[index] = state
            if not state.complete:
                _merge_call(state, fragment, append=True)
            self.mark_dirty(state, request_id)

    def _apply_message(self, obj: dict[str, Any]) -> MessageState:
        message = self._message(obj.get("id"), obj.get("run_id"))  # type: ignore[arg-type]
        message.thread_id = obj.get("thread_id") or message.thread_id
        message.assistant_id = obj.get("assistant_id") or message.assistant_id
        message.role = _one(obj.get("role")) or message.role
        message.status = _one(obj.get("status")) or message.status
        message.created_at = _ts(obj.get("created_at")) or message.created_at
        message.completed_at = _ts(obj.get("completed_at")) or message.completed_at
        details = obj.get("incomplete_details")
        if isinstance(details, dict):
            message.incomplete_reason = details.get("reason")
        text = _message_text(obj.get("content"))
        # The created/in_progress snapshots carry empty content: they must not hide the deltas.
        if text:
            message.snapshot_text = text
            # The raw deltas only stood in for the text until now; held for up to max_tracked_runs
            # runs they were about half of the tracker's memory (scripts/soak.py).
            message.delta_frames = []
        return message

    def message_delta(self, message_id: str, frames: bytes, request_id: str) -> None:
        """`thread.message.delta` frames, kept as bytes: most events of a stream are these, and
        their text is needed only when the stream breaks off before `thread.message.completed`."""
        message = self._messages.get(message_id)
        if message is not None and message.snapshot_text is None:
            message.delta_frames.append(frames)
            self.mark_dirty(message, request_id)

    # -- requests ----------------------------------------------------------------------------
    def tool_outputs_submitted(
        self, run_id: str, body: dict[str, Any], at: datetime
    ) -> list[ToolCallState]:
        """Outputs from a `submit_tool_outputs` request body the upstream accepted."""
        run = self.run(run_id)
        changed: list[ToolCallState] = []
        for item in body.get("tool_outputs") or ():
            if isinstance(item, dict) and isinstance(item.get("tool_call_id"), str):
                state = self._tool_call(run, item["tool_call_id"])
                output = item.get("output")
                state.output = output if isinstance(output, str) else state.output
                state.submitted_at = state.submitted_at or at
                changed.append(state)
        return changed


def _merge_call(state: ToolCallState, call: dict[str, Any], *, append: bool = False) -> None:
    state.type = call.get("type") or state.type
    kind = state.type
    body = call.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        return
    if kind == "function":
        state.name = body.get("name") or state.name
        args = body.get("arguments")
        if isinstance(args, str):
            state.arguments = (state.arguments or "") + args if append else args
        if isinstance(body.get("output"), str):
            state.output = body["output"]
    elif kind == "code_interpreter":
        state.name = "code_interpreter"
        code = body.get("input")
        if isinstance(code, str):
            state.arguments = (state.arguments or "") + code if append else code
        if body.get("outputs"):
            state.output = orjson.dumps(body["outputs"]).decode()
    else:
        state.name = kind
        if body:
            state.output = orjson.dumps(body).decode()


def _message_text(content: Any) -> str | None:
    if not isinstance(content, list):
        return None
    parts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), dict) and isinstance(part["text"].get("value"), str):
            parts.append(part["text"]["value"])
        elif isinstance(part.get("refusal"), str):
            parts.append(part["refusal"])
    return "".join(parts)
