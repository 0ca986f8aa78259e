"""The run model every API records into: runs, steps, tool calls and messages, kept across exchanges.

These are the contract's tables (`runs`, `run_steps`, `tool_calls`, `messages`) as in-memory state:
what the recorder writes, what metrics, spans and budgets read. An API's stitcher (for Assistants,
`apis/assistants/runs.py`) folds the objects its streams and bodies carry into them; nothing here
knows any API's objects or events.

Memory is bounded: at most `max_runs` runs are tracked, least recently touched evicted first. The
recording stays right after an eviction because rows are merged in the database, where a NULL never
erases a known value (record/writer.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

RECORDED: dict[type, tuple[str, tuple[str, ...]]] = {}
"""Each state type the recorder writes: (its table, the columns a snapshot of it fills). The run
model's four are below; an API adds its own (apis/responses/states.py)."""

_RUN_COLUMNS = (
    "run_id", "thread_id", "assistant_id", "model", "status", "key_id", "created_at", "started_at",
    "ended_at", "expires_at", "prompt_tokens", "completion_tokens", "total_tokens", "last_error_code",
    "last_error_message", "incomplete_reason", "tool_rounds", "trace_id", "max_prompt_tokens",
    "max_completion_tokens", "request_count", "first_seen_at", "last_seen_at", "api",
)
_STEP_COLUMNS = (
    "step_id", "run_id", "thread_id", "type", "status", "created_at", "ended_at", "prompt_tokens",
    "completion_tokens", "total_tokens", "last_error_code", "last_error_message", "message_id",
    "first_seen_at", "last_seen_at",
)
_CALL_COLUMNS = (
    "tool_call_id", "step_id", "run_id", "type", "name", "arguments", "output", "requested_at",
    "submitted_at", "call_index",
)
_MESSAGE_COLUMNS = (
    "message_id", "thread_id", "run_id", "assistant_id", "role", "status", "text", "created_at",
    "completed_at", "incomplete_reason",
)

RUN_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled", "expired", "abandoned"})
"""`abandoned`: a Responses or Chat turn left open past `RunStore.abandon_after_s` (no Assistants run has it)."""
STEP_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


@dataclass(slots=True)
class ToolCallState:
    tool_call_id: str
    run_id: str | None
    step_id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    requested_at: datetime | None = None
    submitted_at: datetime | None = None
    call_index: int | None = None
    complete: bool = False
    """The arguments are whole (from requires_action): a fragment seen later is not appended."""


@dataclass(slots=True)
class StepState:
    step_id: str
    run_id: str | None
    thread_id: str | None = None
    type: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    message_id: str | None = None
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    calls_by_index: dict[int, ToolCallState] = field(default_factory=dict)


@dataclass(slots=True)
class MessageState:
    message_id: str
    thread_id: str | None = None
    run_id: str | None = None
    assistant_id: str | None = None
    role: str | None = None
    status: str | None = None
    snapshot_text: str | None = None
    """The text of the latest full message object."""
    created_at: datetime | None = None
    completed_at: datetime | None = None
    incomplete_reason: str | None = None
    delta_frames: list[bytes] = field(default_factory=list)
    """`thread.message.delta` frames as they came (SSE bytes), parsed only if no full snapshot
    ever arrives."""

    @property
    def text(self) -> str | None:
        """The full text: the snapshot's, else what the deltas said so far (a stream that broke
        off still records its partial answer). Parsed here, when a row is written, not per delta."""
        if self.snapshot_text is not None or not self.delta_frames:
            return self.snapshot_text
        parts: list[str] = []
        for frames in self.delta_frames:
            for content in _delta_contents(frames, self.message_id):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), dict):
                        value = part["text"].get("value")
                        if isinstance(value, str):
                            parts.append(value)
        return "".join(parts)


def _delta_contents(frames: bytes, message_id: str) -> Iterator[list[Any]]:
    """The `delta.content` lists of the message's delta frames among `frames`."""
    for line in frames.split(b"\n"):
        if not line.startswith(b"data: "):
            continue
        try:
            obj = orjson.loads(line[6:])
            if obj.get("id") != message_id:
                continue
            content = obj["delta"].get("content") or ()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(content, list):
            yield content


@dataclass(slots=True)
class RunState:
    run_id: str
    thread_id: str | None = None
    assistant_id: str | None = None
    model: str | None = None
    status: str | None = None
    key_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    incomplete_reason: str | None = None
    tool_rounds: int = 0
    trace_id: str | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    request_count: int = 0
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    api: str = "assistants"
    """Which API's runs: `assistants`, `responses` (a turn), `chat`."""
    last_request_id: str | None = None
    pending_call_ids: frozenset[str] = frozenset()
    counted_call_ids: frozenset[str] = frozenset()
    """Every call id of a round already counted in `tool_rounds` (each round has fresh ids)."""
    steps: dict[str, StepState] = field(default_factory=dict)
    tool_calls: dict[str, ToolCallState] = field(default_factory=dict)
    messages: dict[str, MessageState] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in RUN_TERMINAL


@dataclass(slots=True, frozen=True)
class ModelCall:
    """One model call as budgets and spans see it, whatever the API: a Responses response, a Chat
    completion. Not a row (the API records its own); a view an API puts among a fold's changes
    whenever the call changes, so that the budget observer settles it and the turn tracing times it
    without knowing the API. (An Assistants run is billed as the run itself: `RunState`.)"""

    call_id: str
    """The id the upstream gave the call (`resp_...`, `chatcmpl-...`): what its charge is linked to."""
    model: str | None
    final: bool
    """Nothing more will be billed for it: its usage is final, or (None) known never to come."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    status: str | None = None
    """The call's own: `completed`, `incomplete`, `failed`, `cancelled`, `truncated` (its stream was
    cut), or not ended yet."""
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    finish_reason: str | None = None
    """In semconv's words: `stop`, `length`, `tool_calls`, `content_filter`."""
    error_code: str | None = None
    error_message: str | None = None
    conversation_id: str | None = None
    tools: tuple[tuple[str, str, datetime | None, datetime | None], ...] = ()
    """Built-in tools it ran upstream (web search, code interpreter, ...): (item id, type, added, done)."""
    text: str | None = None
    """Its answer's text so far (content: spans carry it only with capture_content)."""


State = Any
"""A snapshot the recorder writes: one of RECORDED's types (RunState, StepState, ...); or a
`ModelCall`, which the recorder skips."""
RECORDED.update({
    RunState: ("runs", _RUN_COLUMNS),
    StepState: ("run_steps", _STEP_COLUMNS),
    ToolCallState: ("tool_calls", _CALL_COLUMNS),
    MessageState: ("messages", _MESSAGE_COLUMNS),
})


class OpenTurns:
    """An API's turns not ended yet, least recently seen first (apis/responses and apis/chat).

    A turn waits for its client between responses (its tool outputs), and a client that gives up
    never says so: a turn idle for `RunStore.abandon_after_s` is ended `abandoned`, its `ended_at`
    the last time runtap saw it. `sweep` is O(1) when none is due; the API calls it as creates come.
    """

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._seen: OrderedDict[str, tuple[RunState, datetime]] = OrderedDict()

    def touch(self, run: RunState, at: datetime) -> None:
        if run.status in RUN_TERMINAL or run.status == "truncated":
            self._seen.pop(run.run_id, None)
            return
        self._seen[run.run_id] = (run, at)
        self._seen.move_to_end(run.run_id)
        if len(self._seen) > self._store.max_runs:
            self._seen.popitem(last=False)  # forgotten with the oldest tracked runs

    def sweep(self, now: datetime) -> list[State]:
        """The turns idle past the limit, ended `abandoned` now."""
        ended: list[State] = []
        idle_s = self._store.abandon_after_s
        while self._seen:
            run, at = next(iter(self._seen.values()))
            if (now - at).total_seconds() < idle_s:
                break
            self._seen.popitem(last=False)
            if run.status not in RUN_TERMINAL:
                run.status, run.ended_at = "abandoned", at
                ended.append(run)
        return ended


@dataclass(slots=True)
class Seen:
    """Who saw an object and when: the exchange's request id, key and trace, and the time."""

    request_id: str
    key_id: str | None
    trace_id: str | None
    at: datetime


class RunStore:
    """Every tracked run and its steps, calls and messages, found by id."""

    def __init__(self, max_runs: int = 50_000, abandon_after_s: float = 3600.0) -> None:
        self.max_runs = max_runs
        self.abandon_after_s = abandon_after_s
        """An API's turn left open this long since last seen is ended `abandoned` (apis/*/stitch.py)."""
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self._steps: dict[str, StepState] = {}
        self._messages: dict[str, MessageState] = {}
        self.extensions: dict[str, Any] = {}
        """Each API's own stitching state beside the run model (apis/responses: its responses)."""
        self.dirty: dict[str, dict[int, State]] = {}
        """States changed by deltas only, by the exchange whose deltas changed them: the recorder
        writes them when that exchange ends (a stream that breaks off keeps its partial answer),
        unless a snapshot wrote them first. Another exchange's end leaves them alone: at high
        concurrency each would otherwise write every open stream's partial text."""
        self._dirty_by: dict[int, str] = {}

    def run(self, run_id: str) -> RunState:
        state = self.runs.get(run_id)
        if state is None:
            state = self.runs[run_id] = RunState(run_id)
            if len(self.runs) > self.max_runs:
                self._evict(self.runs.popitem(last=False)[1])
        else:
            self.runs.move_to_end(run_id)
        return state

    def adopt(self, run: RunState) -> None:
        """A run an API built itself (a Responses turn): tracked, and bounded, like the others."""
        if run.run_id in self.runs:
            self.runs.move_to_end(run.run_id)
            return
        self.runs[run.run_id] = run
        if len(self.runs) > self.max_runs:
            self._evict(self.runs.popitem(last=False)[1])

    def _evict(self, run: RunState) -> None:
        for step_id in run.steps:
            self._steps.pop(step_id, None)
        for message_id in run.messages:
            self._messages.pop(message_id, None)

    def mark_dirty(self, state: State, request_id: str) -> None:
        key = id(state)
        before = self._dirty_by.get(key)
        if before == request_id:
            return
        if before is not None:
            self._undirty(key, before)
        self._dirty_by[key] = request_id
        self.dirty.setdefault(request_id, {})[key] = state

    def written(self, state: State) -> None:
        """The state's snapshot went to the recording: its deltas so far need no row of their own."""
        if self._dirty_by:
            request_id = self._dirty_by.pop(id(state), None)
            if request_id is not None:
                self._undirty(id(state), request_id)

    def drain_dirty(self, request_id: str) -> list[State]:
        """The states the exchange's deltas changed and no snapshot has written since."""
        mine = self.dirty.pop(request_id, None)
        if not mine:
            return []
        for key in mine:
            self._dirty_by.pop(key, None)
        return list(mine.values())

    def _undirty(self, key: int, request_id: str) -> None:
        states = self.dirty.get(request_id)
        if states is not None:
            states.pop(key, None)
            if not states:
                del self.dirty[request_id]

    def _tool_call(self, run: RunState, call_id: str) -> ToolCallState:
        state = run.tool_calls.get(call_id)
        if state is None:
            state = run.tool_calls[call_id] = ToolCallState(call_id, run.run_id)
        return state

    def _step(self, step_id: str, run_id: str | None) -> StepState:
        step = self._steps.get(step_id)
        if step is None:
            run = None if run_id is None else self.run(run_id)
            step = self._steps[step_id] = StepState(step_id, None if run is None else run.run_id)
            if run is not None:
                run.steps[step_id] = step
        return step

    def _message(self, message_id: str, run_id: str | None) -> MessageState:
        message = self._messages.get(message_id)
        if message is None:
            run = None if run_id is None else self.run(run_id)
            owner = None if run is None else run.run_id  # the run's copy of the id: one string, not two
            message = self._messages[message_id] = MessageState(message_id, run_id=owner)
            if run is not None:
                run.messages[message_id] = message
        message.run_id = message.run_id or run_id
        return message
