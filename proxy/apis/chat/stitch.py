"""Chat Completions into turns (protocol-responses.md §9, §11): sans-io, beside the run model.

Chat is stateless: each request carries the whole conversation. A request whose messages end in
`role: tool` results for calls runtap saw asked for continues that turn; any other starts one,
whose id is its first completion's (`chatcmpl-...`). A turn is a `RunState` with `api = "chat"`:
usage summed over its completions, `tool_rounds` its tool round trips, each call a `ToolCallState`
(`requested_at` when the asking completion finished, `submitted_at` when the result arrived), each
completion's answer a `MessageState`. A stream's chunks are folded as they come (content and
argument fragments appended, ids and finish reasons kept); states are handed on only when the
completion is known, finishes, reports usage, or its exchange ends.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ...runs import MessageState, ModelCall, OpenTurns, RunState, RunStore, Seen, State, ToolCallState

_STATUS = {"stop": "completed", "tool_calls": "requires_action", "function_call": "requires_action",
           "length": "incomplete", "content_filter": "incomplete"}
_REASON = {"length": "max_tokens", "content_filter": "content_filter"}


@dataclass(slots=True)
class Completion:
    """One completion as its exchange saw it so far."""

    request_id: str
    completion_id: str | None = None
    model: str | None = None
    content: list[str | bytes] = field(default_factory=list)
    """Its text in pieces: strings, and runs of content-chunk frames not read yet (bytes)."""
    calls: dict[int, ToolCallState] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: tuple[int | None, int | None, int | None] | None = None
    details: tuple[int | None, int | None] = (None, None)
    """Of the usage: cached input tokens, reasoning output tokens."""


@dataclass(slots=True)
class Turn:
    run: RunState
    usage: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict)


class ChatTracker:
    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._turns: OrderedDict[str, Turn] = OrderedDict()
        self._calls: OrderedDict[str, str] = OrderedDict()  # tool call id -> its turn
        self._requests: dict[str, tuple[list[tuple[str, str | None]], datetime]] = {}
        self._open: dict[str, Completion] = {}
        self._completions: dict[str, str] = {}  # completion id -> its turn (as long as the turn is kept)
        self.open_turns = OpenTurns(store)

    def request(self, request_id: str, body: dict[str, Any], at: datetime) -> str | None:
        """A create the upstream accepted: the tool results its messages end with, if any. Returns
        the turn it goes on with, when runtap knows one (before the completion)."""
        messages = body.get("messages")
        results: list[tuple[str, str | None]] = []
        for message in reversed(messages if isinstance(messages, list) else ()):
            if not isinstance(message, dict) or message.get("role") != "tool":
                break
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str):
                content = message.get("content")
                results.append((call_id, content if isinstance(content, str) else None))
        self._requests[request_id] = (results[::-1], at)
        turn_id = next((self._calls[call_id] for call_id, _ in results if call_id in self._calls), None)
        return turn_id if turn_id in self._turns else None

    def chunk(self, request_id: str, obj: dict[str, Any], seen: Seen) -> list[State]:
        """A `chat.completion.chunk` of a stream."""
        completion = self._open.get(request_id)
        if completion is None:
            completion = self._open[request_id] = Completion(request_id)
        notable = False  # most chunks only add a fragment: no state is handed on for them
        begun: list[State] = []
        if completion.completion_id is None and isinstance(obj.get("id"), str) and obj["id"]:
            completion.completion_id = obj["id"]  # Azure's first chunk has id "" (§9)
            begun = self._begin(completion, seen)
            notable = True
        completion.model = obj.get("model") or completion.model
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    _fold_delta(completion, delta)
                if isinstance(choice.get("finish_reason"), str):
                    completion.finish_reason = choice["finish_reason"]
                    notable = True
        usage = obj.get("usage")
        if isinstance(usage, dict):
            completion.usage, completion.details = _usage(usage), _details(usage)
            notable = True
        return begun + self._states(completion, seen, final=completion.usage is not None) if notable else []

    def deltas(self, request_id: str, frames: bytes) -> bool:
        """A run of content chunks (api.CONTENT_CHUNK), kept as bytes until the text is needed."""
        completion = self._open.get(request_id)
        if completion is None or completion.completion_id is None:
            return False  # before the first chunk: parsed and folded like any
        completion.content.append(frames)
        return True

    def completion(self, request_id: str, obj: dict[str, Any], seen: Seen) -> list[State]:
        """A whole `chat.completion` (a JSON body)."""
        completion = Completion(request_id, obj.get("id") if isinstance(obj.get("id"), str) else None,
                                obj.get("model"))
        if completion.completion_id is None:
            return []
        answered = self._begin(completion, seen)
        for choice in obj.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                message = choice.get("message") or {}
                if isinstance(message.get("content"), str):
                    completion.content.append(message["content"])
                for index, call in enumerate(message.get("tool_calls") or ()):
                    if isinstance(call, dict):
                        _fold_call(completion, {**call, "index": index})
                completion.finish_reason = choice.get("finish_reason")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            completion.usage, completion.details = _usage(usage), _details(usage)
        return answered + self._states(completion, seen, final=True)

    def ended(self, request_id: str, seen: Seen, *, cut: bool) -> list[State]:
        """The exchange ended; `cut`: its stream broke off before `[DONE]`."""
        self._requests.pop(request_id, None)
        completion = self._open.pop(request_id, None)
        if completion is None or completion.completion_id is None:
            return []
        if cut and completion.finish_reason is None:
            completion.finish_reason = "truncated"
        return self._states(completion, seen, final=True)

    # -- internals ---------------------------------------------------------------------------
    def _begin(self, completion: Completion, seen: Seen) -> list[State]:
        """The completion's id is known: its turn, new or continued (then the results it answers)."""
        results, at = self._requests.pop(completion.request_id, ([], seen.at))
        turn_id = next((self._calls[call_id] for call_id, _ in results if call_id in self._calls), None)
        turn = self._turns.get(turn_id) if turn_id else None
        changed: list[State] = []
        if turn is None:
            cid = completion.completion_id or ""
            turn = self._turns[cid] = Turn(RunState(cid, api="chat", key_id=seen.key_id, trace_id=seen.trace_id,
                                                    first_seen_at=seen.at, status="in_progress"))
            while len(self._turns) > self._store.max_runs:
                _, old = self._turns.popitem(last=False)
                for cid_of_old in old.usage:
                    self._completions.pop(cid_of_old, None)
        else:
            turn.run.tool_rounds += 1
            for call_id, output in results:
                call = turn.run.tool_calls.get(call_id)
                if call is not None:
                    call.output, call.submitted_at = output, call.submitted_at or at
                    changed.append(call)
        turn.usage[completion.completion_id or ""] = (None, None, None)
        self._completions[completion.completion_id or ""] = turn.run.run_id
        return changed

    def _states(self, completion: Completion, seen: Seen, *, final: bool) -> list[State]:
        """The turn's states the completion changed; `final`: no more usage will come for it (its
        usage chunk came, its exchange ended, or it is a whole JSON completion)."""
        turn_id = self._completions.get(completion.completion_id or "")
        turn = self._turns.get(turn_id) if turn_id else None
        if turn is None or completion.completion_id is None:
            return []
        run = turn.run
        changed: list[State] = [*self._begin_calls(completion, turn, seen)]
        if completion.usage is not None:
            turn.usage[completion.completion_id] = completion.usage
        for name, i in (("prompt_tokens", 0), ("completion_tokens", 1), ("total_tokens", 2)):
            values = [u[i] for u in turn.usage.values() if u[i] is not None]
            setattr(run, name, sum(values) if values else None)
        reason = completion.finish_reason
        run.model = completion.model or run.model
        status = "truncated" if reason == "truncated" else _STATUS.get(reason or "", run.status)
        if status in ("completed", "incomplete") and not final:
            status = "in_progress"  # its usage chunk may follow the finish reason: the turn ends with it
        run.status = status
        run.incomplete_reason = _REASON.get(reason or "")
        run.last_seen_at = seen.at
        run.ended_at = seen.at if run.status in ("completed", "incomplete", "truncated") else None
        message = MessageState(completion.completion_id, run_id=run.run_id, role="assistant",
                               status=None if reason is None else "incomplete" if reason in _REASON or
                               reason == "truncated" else "completed", snapshot_text=_text(completion),
                               completed_at=seen.at if reason is not None else None)
        self._store.adopt(run)
        self.open_turns.touch(run, seen.at)
        usage = completion.usage or (None, None, None)
        status = None if not final else "truncated" if reason == "truncated" else \
            "incomplete" if reason in _REASON else "completed"
        call = ModelCall(completion.completion_id, completion.model, final, *usage, status, *completion.details,
                         None if reason == "truncated" else reason, text=message.snapshot_text)
        return [*changed, call, message, run]

    def _begin_calls(self, completion: Completion, turn: Turn, seen: Seen) -> list[State]:
        if completion.finish_reason is None:
            return []
        for call in completion.calls.values():
            call.run_id = turn.run.run_id
            call.step_id = completion.completion_id  # the model call that asked for it (its span's parent)
            call.requested_at = call.requested_at or seen.at
            turn.run.tool_calls[call.tool_call_id] = call
            self._calls[call.tool_call_id] = turn.run.run_id
            while len(self._calls) > 4 * self._store.max_runs:
                self._calls.popitem(last=False)
        return list(completion.calls.values())

def _text(completion: Completion) -> str:
    """The answer so far; runs of content chunks are read here, once (one JSON parse per run)."""
    parts = completion.content
    for i, part in enumerate(parts):
        if isinstance(part, bytes):
            parts[i] = "".join(_contents(part))
    return "".join(parts)  # type: ignore[arg-type]  # all str now


_CONTENT = re.compile(rb'"delta":\{"content":("(?:[^"\\\n]|\\.)*+")\}')
"""A content chunk's text, as a JSON string (the chunk's shape is api.CONTENT_CHUNK's)."""


def _contents(frames: bytes) -> list[str]:
    """The texts of a run of content chunks: their JSON strings found in C, decoded in one parse."""
    strings = _CONTENT.findall(frames)
    try:
        texts = orjson.loads(b"[" + b",".join(strings) + b"]")
    except orjson.JSONDecodeError:  # a string the pattern took but JSON does not: one by one
        texts = []
        for string in strings:
            try:
                texts.append(orjson.loads(string))
            except orjson.JSONDecodeError:
                continue
    return [t for t in texts if isinstance(t, str)]


def _fold_delta(completion: Completion, delta: dict[str, Any]) -> None:
    if isinstance(delta.get("content"), str):
        completion.content.append(delta["content"])
    for call in delta.get("tool_calls") or ():
        if isinstance(call, dict):
            _fold_call(completion, call)


def _fold_call(completion: Completion, fragment: dict[str, Any]) -> None:
    index = fragment.get("index")
    if not isinstance(index, int):
        return
    call = completion.calls.get(index)
    if call is None:
        call_id = fragment.get("id") if isinstance(fragment.get("id"), str) else f"{completion.completion_id}#{index}"
        call = completion.calls[index] = ToolCallState(call_id, None, type="function", call_index=index,
                                                       arguments="")
    function = fragment.get("function")
    if isinstance(function, dict):
        call.name = function.get("name") or call.name
        if isinstance(function.get("arguments"), str):
            call.arguments = (call.arguments or "") + function["arguments"]


def _usage(usage: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), _int(usage.get("total_tokens"))


def _details(usage: dict[str, Any]) -> tuple[int | None, int | None]:
    prompt, completion = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    return (_int(prompt.get("cached_tokens")) if isinstance(prompt, dict) else None,
            _int(completion.get("reasoning_tokens")) if isinstance(completion, dict) else None)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None
