"""The fake upstream's server-side state: threads, runs, steps and messages, driven by scripts.

One engine serves both delivery modes so they can never disagree: a script is compiled into a
*segment* of events (from run creation, or from a tool-output submission, up to the next pause or
terminal state) held in ``RunRecord.pending``. Popping an event applies it to the stored objects.
A stream pops every event and writes it; a non-streamed run pops one run-status phase per
``GET .../runs/{id}`` (queued -> in_progress -> requires_action or terminal). If a stream dies
mid-way the remainder is applied anyway: the real run keeps going server-side (protocol.md §2.2).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.testing.scripts import CodeInterpreterTurn, FileSearchTurn, Script, TextTurn, ToolRound
from proxy.testing.streams import (
    RUN_STATUS_EVENTS,
    Ids,
    Json,
    add_usage,
    dumps,
    error_body,
    function_call_deltas,
    message_delta,
    message_object,
    normalise_content,
    now,
    run_object,
    split_arguments,
    split_text,
    step_delta,
    step_object,
    text_content,
    thread_object,
)

FILE_SEARCH_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


@dataclass
class Pending:
    """An event waiting to be delivered; ``snapshot`` is what the state stores once it is
    (delta events carry the accumulated object so a poll mid-run sees consistent state)."""

    event: str
    data: Json
    snapshot: Json | None = None


@dataclass
class ThreadRecord:
    thread: Json
    messages: dict[str, Json] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)


@dataclass
class Awaiting:
    """The paused tool-calls step and the call ids whose outputs the run is waiting for."""

    step_id: str
    call_ids: list[str]


@dataclass
class RunRecord:
    run: Json
    script: Script
    include: tuple[str, ...] = ()
    next_turn: int = 0
    pending: deque[Pending] = field(default_factory=deque)
    steps: dict[str, Json] = field(default_factory=dict)
    step_usage: dict[str, Json] = field(default_factory=dict)
    spent: Json | None = None
    awaiting: Awaiting | None = None
    expire_on_poll: bool = False
    streaming: bool = False

    @property
    def status(self) -> str:
        return str(self.run["status"])


class ApiError(Exception):
    """Raised by the engine for client errors; the server turns it into an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 *, body: Json | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.body = body or error_body(message, param=param, code=code)
        """The full error body; Azure's own errors are shaped differently."""


class Engine:
    def __init__(self, ids: Ids, clock: Callable[[], int] = now, max_threads: int | None = None) -> None:
        self.ids, self.clock, self.max_threads = ids, clock, max_threads
        self.threads: dict[str, ThreadRecord] = {}
        self.runs: dict[str, RunRecord] = {}

    # -- threads and messages ----------------------------------------------------------------
    def create_thread(self, body: Json) -> ThreadRecord:
        thread = thread_object(self.ids, created_at=self.clock(), metadata=body.get("metadata"),
                               tool_resources=body.get("tool_resources"))
        rec = ThreadRecord(thread)
        for msg in body.get("messages") or []:  # validate them all before the thread exists
            self.add_message(rec, msg)
        self.threads[thread["id"]] = rec
        if self.max_threads is not None:
            while len(self.threads) > self.max_threads:  # a served fake must not grow forever
                old = self.threads.pop(next(iter(self.threads)))
                for run_id in old.run_ids:
                    self.runs.pop(run_id, None)
        return rec

    def thread(self, thread_id: str) -> ThreadRecord:
        rec = self.threads.get(thread_id)
        if rec is None:
            raise ApiError(404, f"No thread found with id '{thread_id}'.")
        return rec

    def run_of(self, thread_id: str, run_id: str) -> RunRecord:
        self.thread(thread_id)
        rec = self.runs.get(run_id)
        if rec is None or rec.run["thread_id"] != thread_id:
            raise ApiError(404, f"No run found with id '{run_id}'.")
        return rec

    def active_run(self, thread: ThreadRecord) -> RunRecord | None:
        # Only the thread's newest run can be active: no run is created while another is, and a
        # terminal status is final. Scanning them all made each create O(the thread's runs), which
        # in a long soak (thousands of runs per thread) made the fake, not runtap, the bottleneck.
        for run_id in reversed(thread.run_ids):
            rec = self.runs.get(run_id)
            if rec is not None:  # (an evicted one is skipped: the newest still tracked decides)
                return rec if rec.status in ("queued", "in_progress", "requires_action", "cancelling") else None
        return None

    def add_message(self, thread: ThreadRecord, body: Json) -> Json:
        role = body.get("role")
        if role not in ("user", "assistant"):
            raise ApiError(400, f"Invalid value: '{role}'. Supported values are: 'user' and 'assistant'.",
                           param="role", code="invalid_value")
        content = body.get("content")
        if not isinstance(content, str | list):
            raise ApiError(400, "Missing required parameter: 'content'.", param="content",
                           code="missing_required_parameter")
        msg = message_object(self.ids, thread_id=thread.thread["id"], role=role, status="completed",
                             content=normalise_content(content), created_at=self.clock(),
                             attachments=body.get("attachments"), metadata=body.get("metadata"))
        thread.messages[msg["id"]] = msg
        return msg

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, thread: ThreadRecord, body: Json, script: Script, *, thread_created: bool,
                   include: tuple[str, ...] = ()) -> RunRecord:
        active = self.active_run(thread)
        if active is not None:
            raise ApiError(400, f"Thread {thread.thread['id']} already has an active run {active.run['id']}.")
        instructions = body.get("instructions") or "You are a helpful assistant."
        if body.get("additional_instructions"):
            instructions = f"{instructions}\n{body['additional_instructions']}"
        for msg in body.get("additional_messages") or []:
            self.add_message(thread, msg)
        defaults = {"temperature": 1.0, "top_p": 1.0, "response_format": "auto", "tool_choice": "auto",
                    "parallel_tool_calls": True}
        opts = {k: (body[k] if body.get(k) is not None else v) for k, v in defaults.items()}
        run = run_object(
            self.ids, thread_id=thread.thread["id"], assistant_id=body["assistant_id"],
            created_at=self.clock(), model=script.model or body.get("model") or "gpt-4o",
            instructions=instructions, tools=body.get("tools"), tool_resources=body.get("tool_resources"),
            metadata=body.get("metadata"), max_prompt_tokens=body.get("max_prompt_tokens"),
            max_completion_tokens=body.get("max_completion_tokens"),
            truncation_strategy=body.get("truncation_strategy"), **opts,
        )
        rec = RunRecord(run=run, script=script, include=include)
        self.runs[run["id"]] = rec
        thread.run_ids.append(run["id"])
        out: list[Pending] = []
        if thread_created:
            out.append(Pending("thread.created", copy.deepcopy(thread.thread)))
        proj = dict(run)
        out.append(Pending("thread.run.created", dict(proj)))
        self._run_event(out, proj, "thread.run.queued")
        self._run_event(out, proj, "thread.run.in_progress", status="in_progress", started_at=self.clock())
        self._turns(rec, proj, out)
        rec.pending.extend(out)
        return rec

    def submit_tool_outputs(self, rec: RunRecord, body: Json) -> None:
        """Validate outputs against the paused step and compile the continuation segment."""
        self.maybe_expire(rec)
        if rec.status != "requires_action" or rec.awaiting is None:
            raise ApiError(400, f'Runs in status "{rec.status}" do not accept tool outputs.')
        outputs = body.get("tool_outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ApiError(400, "Missing required parameter: 'tool_outputs'.", param="tool_outputs",
                           code="missing_required_parameter")
        got = [o.get("tool_call_id") for o in outputs]
        if sorted(map(str, got)) != sorted(rec.awaiting.call_ids) or len(set(got)) != len(got):
            raise ApiError(400, f"Expected tool outputs for call_ids {rec.awaiting.call_ids}, got {got}",
                           param="tool_outputs")
        for i, o in enumerate(outputs):
            if not isinstance(o.get("output"), str):
                raise ApiError(400, f"Invalid type for 'tool_outputs[{i}].output': expected a string.",
                               param=f"tool_outputs[{i}].output", code="invalid_type")
        by_id = {o["tool_call_id"]: o["output"] for o in outputs}
        t = self.clock()
        step = copy.deepcopy(rec.steps[rec.awaiting.step_id])
        for call in step["step_details"]["tool_calls"]:
            call["function"]["output"] = by_id[call["id"]]
        step.update(status="completed", completed_at=t, usage=rec.step_usage[step["id"]])
        rec.awaiting = None
        out = [Pending("thread.run.step.completed", step)]
        proj = dict(rec.run)
        self._run_event(out, proj, "thread.run.queued", status="queued", required_action=None, usage=None)
        self._run_event(out, proj, "thread.run.in_progress", status="in_progress")
        self._turns(rec, proj, out)
        rec.pending.extend(out)

    def cancel(self, rec: RunRecord) -> None:
        """``cancelling`` now; the stream (if one is open) or the next poll delivers ``cancelled``."""
        if rec.status not in ("queued", "in_progress", "requires_action"):
            raise ApiError(400, f"Cannot cancel run with status '{rec.status}'.")
        rec.pending.clear()
        rec.awaiting, rec.next_turn, t = None, len(rec.script.turns), self.clock()
        proj = dict(rec.run)
        out: list[Pending] = []
        self._run_event(out, proj, "thread.run.cancelling", status="cancelling", required_action=None)
        self._apply(rec, out[0])
        if not rec.streaming:
            out.clear()
        thread = self.threads[rec.run["thread_id"]]
        for msg in thread.messages.values():
            if msg["run_id"] == rec.run["id"] and msg["status"] == "in_progress":
                done = copy.deepcopy(msg)
                done.update(status="incomplete", incomplete_details={"reason": "run_cancelled"},
                            incomplete_at=t)
                out.append(Pending("thread.message.incomplete", done))
        total = None
        for step in rec.steps.values():
            if step["status"] == "in_progress":
                step = copy.deepcopy(step)
                step.update(status="cancelled", cancelled_at=t, usage=rec.step_usage.get(step["id"]))
                out.append(Pending("thread.run.step.cancelled", step))
            total = add_usage(total, step["usage"])
        self._run_event(out, proj, "thread.run.cancelled", status="cancelled", cancelled_at=t,
                        expires_at=None, usage=total)
        rec.pending.extend(out)

    def maybe_expire(self, rec: RunRecord) -> None:
        """A paused run whose script ends ``expired`` expires as soon as anyone looks at it."""
        if rec.expire_on_poll and rec.status == "requires_action" and rec.awaiting and not rec.pending:
            t = self.clock()
            step = copy.deepcopy(rec.steps[rec.awaiting.step_id])
            step.update(status="expired", expired_at=t, usage=rec.step_usage[step["id"]])
            rec.awaiting, proj = None, dict(rec.run)
            out = [Pending("thread.run.step.expired", step)]
            self._run_event(out, proj, "thread.run.expired", status="expired", required_action=None,
                            usage=rec.spent)
            for item in out:
                self._apply(rec, item)

    # -- delivery --------------------------------------------------------------------------------
    def pop(self, rec: RunRecord) -> Pending | None:
        if not rec.pending:
            return None
        item = rec.pending.popleft()
        self._apply(rec, item)
        return item

    def advance(self, rec: RunRecord, until: str | None = None) -> None:
        """Apply events up to and including the next run-status event (or the named one)."""
        while (item := self.pop(rec)) is not None:
            if item.event == until or (until is None and item.event in RUN_STATUS_EVENTS):
                return

    def poll(self, rec: RunRecord) -> None:
        """One ``GET`` of a run: advance one phase unless a stream is delivering this run."""
        if rec.streaming:
            return
        if rec.pending:
            self.advance(rec)
        else:
            self.maybe_expire(rec)

    def drain(self, rec: RunRecord) -> None:
        while self.pop(rec) is not None:
            pass

    def _apply(self, rec: RunRecord, item: Pending) -> None:
        snap = item.snapshot if item.snapshot is not None else item.data
        if item.event in RUN_STATUS_EVENTS:
            rec.run = snap
        elif item.event.startswith("thread.run.step."):
            rec.steps[snap["id"]] = snap
        elif item.event.startswith("thread.message."):
            self.threads[rec.run["thread_id"]].messages[snap["id"]] = snap

    # -- compiling scripts into events --------------------------------------------------------------
    @staticmethod
    def _run_event(out: list[Pending], proj: Json, event: str, **changes: Any) -> None:
        """Snapshot the projected run. Shallow copies suffice: run snapshots only ever change by
        replacing top-level keys, never by mutating nested values (and it keeps the fake fast)."""
        proj.update(changes)
        out.append(Pending(event, dict(proj)))

    def _spend(self, rec: RunRecord, step_id: str, used: Json) -> None:
        rec.step_usage[step_id] = used
        rec.spent = add_usage(rec.spent, used)

    def _turns(self, rec: RunRecord, proj: Json, out: list[Pending]) -> None:
        script, turns = rec.script, rec.script.turns
        while rec.next_turn < len(turns):
            turn = turns[rec.next_turn]
            rec.next_turn += 1
            last = rec.next_turn == len(turns)
            if isinstance(turn, TextTurn):
                ending = "incomplete" if last and script.outcome.status == "incomplete" else "completed"
                self._message_step(rec, proj, out, turn.text, turn.chunks, turn.usage(), ending)
            elif isinstance(turn, ToolRound):
                self._tool_round(rec, proj, out, turn)
                rec.expire_on_poll = last and script.outcome.status == "expired"
                return
            else:
                self._builtin_step(rec, proj, out, turn)
        self._outcome(rec, proj, out)

    def _message_step(self, rec: RunRecord, proj: Json, out: list[Pending], text: str, chunks: int | None,
                      used: Json, ending: str) -> None:
        t = self.clock()
        msg = message_object(self.ids, thread_id=proj["thread_id"], assistant_id=proj["assistant_id"],
                             run_id=proj["id"], created_at=t)
        step = step_object(self.ids, run=proj, created_at=t, step_details={
            "type": "message_creation", "message_creation": {"message_id": msg["id"]}})
        out += [Pending("thread.run.step.created", step), Pending("thread.run.step.in_progress", step),
                Pending("thread.message.created", msg), Pending("thread.message.in_progress", msg)]
        acc = ""
        for k, piece in enumerate(split_text(text, chunks)):
            acc += piece
            snap = {**msg, "content": [text_content(acc)]}
            out.append(Pending("thread.message.delta", message_delta(msg["id"], piece, first=k == 0), snap))
        final = {**msg, "content": [text_content(text)] if text else []}
        done = {**step, "usage": used}
        if ending == "completed":
            final.update(status="completed", completed_at=t)
            done.update(status="completed", completed_at=t)
        else:
            reason = "run_failed" if ending == "failed" else "max_tokens"
            final.update(status="incomplete", incomplete_at=t, incomplete_details={"reason": reason})
            if ending == "failed":
                error = {"code": rec.script.outcome.error_code, "message": rec.script.outcome.error_message}
                done.update(status="failed", failed_at=t, last_error=error)
            else:
                done.update(status="completed", completed_at=t)
        out.append(Pending(f"thread.message.{final['status']}", final))
        out.append(Pending(f"thread.run.step.{done['status']}", done))
        self._spend(rec, step["id"], used)

    def _tool_round(self, rec: RunRecord, proj: Json, out: list[Pending], turn: ToolRound) -> None:
        step = step_object(self.ids, run=proj, created_at=self.clock(),
                           step_details={"type": "tool_calls", "tool_calls": []})
        out += [Pending("thread.run.step.created", step), Pending("thread.run.step.in_progress", step)]
        acc: list[Json] = []
        required: list[Json] = []
        for index, call in enumerate(turn.calls):
            call_id = call.call_id or self.ids.new("call")
            args = call.arguments if isinstance(call.arguments, str) else dumps(call.arguments).decode()
            acc.append({"id": call_id, "type": "function",
                        "function": {"name": call.name, "arguments": "", "output": None}})
            for delta in function_call_deltas(step["id"], index, call_id, call.name, args):
                acc[index]["function"]["arguments"] += delta["delta"]["step_details"]["tool_calls"][0][
                    "function"]["arguments"]
                snap = copy.deepcopy(step)
                snap["step_details"]["tool_calls"] = copy.deepcopy(acc)
                out.append(Pending("thread.run.step.delta", delta, snap))
            required.append({"id": call_id, "type": "function",
                             "function": {"name": call.name, "arguments": args}})
        self._spend(rec, step["id"], turn.usage())
        rec.awaiting = Awaiting(step["id"], [c["id"] for c in required])
        action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": required}}
        snapshot_usage = rec.spent if rec.script.usage_on_requires_action else None
        self._run_event(out, proj, "thread.run.requires_action", status="requires_action",
                        required_action=action, usage=snapshot_usage)

    def _builtin_step(self, rec: RunRecord, proj: Json, out: list[Pending],
                      turn: CodeInterpreterTurn | FileSearchTurn) -> None:
        t, call_id = self.clock(), self.ids.new("call")
        step = step_object(self.ids, run=proj, created_at=t,
                           step_details={"type": "tool_calls", "tool_calls": []})
        out += [Pending("thread.run.step.created", step), Pending("thread.run.step.in_progress", step)]
        if isinstance(turn, CodeInterpreterTurn):
            fragments: list[Json] = [{"index": 0, "id": call_id, "type": "code_interpreter",
                                      "code_interpreter": {"input": "", "outputs": []}}]
            fragments += [{"index": 0, "type": "code_interpreter", "code_interpreter": {"input": frag}}
                          for frag in split_arguments(turn.input)]
            fragments.append({"index": 0, "type": "code_interpreter", "code_interpreter": {
                "outputs": [{"index": 0, "type": "logs", "logs": turn.logs}]}})
            final: Json = {"id": call_id, "type": "code_interpreter", "code_interpreter": {
                "input": turn.input, "outputs": [{"type": "logs", "logs": turn.logs}]}}
        else:
            fragments = [{"index": 0, "id": call_id, "type": "file_search", "file_search": {}}]
            results = []
            for r in turn.results:
                result: Json = {"file_id": r.file_id, "file_name": r.file_name, "score": r.score}
                if FILE_SEARCH_CONTENT in rec.include:
                    result["content"] = [{"type": "text", "text": r.text}]
                results.append(result)
            ranking = {"ranker": "default_2024_08_21", "score_threshold": 0.0}
            final = {"id": call_id, "type": "file_search",
                     "file_search": {"ranking_options": ranking, "results": results}}
        for frag in fragments:
            out.append(Pending("thread.run.step.delta", step_delta(step["id"], [frag])))
        done = {**step, "status": "completed", "completed_at": t, "usage": turn.usage(),
                "step_details": {"type": "tool_calls", "tool_calls": [final]}}
        out[-1].snapshot = done  # polls see the finished call once the last fragment is applied
        out.append(Pending("thread.run.step.completed", done))
        self._spend(rec, step["id"], turn.usage())

    def _outcome(self, rec: RunRecord, proj: Json, out: list[Pending]) -> None:
        outcome, t = rec.script.outcome, self.clock()
        if outcome.status == "failed" and outcome.partial_text is not None:
            used = outcome.partial_usage()
            assert used is not None
            self._message_step(rec, proj, out, outcome.partial_text, None, used, "failed")
        base: Json = {"status": outcome.status, "required_action": None, "usage": rec.spent}
        if outcome.status == "completed":
            self._run_event(out, proj, "thread.run.completed", completed_at=t, expires_at=None, **base)
        elif outcome.status == "failed":
            error = {"code": outcome.error_code, "message": outcome.error_message}
            self._run_event(out, proj, "thread.run.failed", failed_at=t, last_error=error, expires_at=None,
                            **base)
        elif outcome.status == "incomplete":
            name = "thread.run.completed" if outcome.under_completed_event else "thread.run.incomplete"
            self._run_event(out, proj, name, completed_at=t, expires_at=None,
                            incomplete_details={"reason": outcome.incomplete_reason}, **base)
        elif outcome.status == "cancelled":
            self._run_event(out, proj, "thread.run.cancelling", status="cancelling")
            self._run_event(out, proj, "thread.run.cancelled", cancelled_at=t, expires_at=None, **base)
        else:
            self._run_event(out, proj, "thread.run.expired", **base)
