"""Compile a :class:`ResponseScript` into the exact event sequence of one Response stream.

The order is protocol-responses.md §3 ("Order observed in every recorded stream"):
``response.created`` (``queued`` in background mode) → [``response.queued``] →
``response.in_progress`` → per output item ``output_item.added`` … ``output_item.done`` → one of
``response.completed`` / ``response.incomplete`` / ``response.failed`` (after an in-band ``error``
event, §6). ``sequence_number`` runs from 0 without gaps. The same list serves a live stream, a
poll (which applies it one lifecycle phase at a time) and a ``starting_after`` resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.testing.responses_objects import (
    OBFUSCATED_EVENTS,
    event,
    function_call_item,
    hex_id,
    message_item,
    output_text,
    reasoning_item,
    summary_text,
    usage_object,
)
from proxy.testing.responses_scripts import FunctionCall, Message, Reasoning, ResponseScript, item_fragments
from proxy.testing.streams import Ids, Json, split_text


@dataclass
class _Planned:
    item: Message | Reasoning | FunctionCall
    fragments: list[str]
    cut: bool = False
    """Truncated by ``max_output_tokens``: the item ends ``incomplete``."""


class EventCompiler:
    """One response's events; ``base`` is the Response as ``response.created`` shows it."""

    def __init__(self, ids: Ids, tail: str, clock: Callable[[], int], *, obfuscate: bool) -> None:
        self.ids, self.tail, self.clock, self.obfuscate = ids, tail, clock, obfuscate
        self.events: list[Json] = []

    def compile(self, script: ResponseScript, base: Json, body: Json, input_tokens: int) -> list[Json]:
        background = bool(base["background"])
        self._lifecycle("response.created", base)
        if background:
            self._lifecycle("response.queued", base)
        self._lifecycle("response.in_progress", {**base, "status": "in_progress"})
        plan, truncated = self._plan(script, body.get("max_output_tokens"))
        if script.incomplete is not None:  # the message being written when generation stopped
            messages = [p for p in plan if isinstance(p.item, Message)]
            if messages:
                messages[-1].cut = True
        outputs = [self._item(n, p, incomplete=p.cut) for n, p in enumerate(plan)]
        final: Json = {**base, "output": outputs,
                       "service_tier": "default" if base["service_tier"] == "auto" else base["service_tier"]}
        if script.failure is not None:
            f = script.failure
            if f.partial_text:
                self._partial_message(len(outputs), f.partial_text)
            self._add("error", error={"type": f.type, "code": f.code, "message": f.message, "param": None})
            self._lifecycle("response.failed", {**final, "status": "failed",
                                                "error": {"code": f.code, "message": f.message}})
            return self.events
        output_tokens = script.expected_output_tokens()
        if truncated is not None:
            output_tokens = truncated
        final["usage"] = usage_object(input_tokens, script.cached_tokens, output_tokens,
                                      script.reasoning_tokens(), script.cache_write_tokens)
        reason = "max_output_tokens" if truncated is not None else script.incomplete
        if reason is not None:  # §4: completed_at stays null, no response.completed is sent
            self._lifecycle("response.incomplete", {**final, "status": "incomplete",
                                                    "incomplete_details": {"reason": reason}})
        else:
            self._lifecycle("response.completed", {**final, "status": "completed", "completed_at": self.clock()})
        return self.events

    # -- pieces ------------------------------------------------------------------------------------
    def _add(self, type_: str, **fields: Any) -> None:
        if self.obfuscate and type_ in OBFUSCATED_EVENTS:
            # §2: random padding "to normalize payload sizes"; short deltas get longer padding.
            fields["obfuscation"] = self.ids.chars(max(2, 16 - len(fields["delta"])))
        self.events.append(event(type_, len(self.events), **fields))

    def _lifecycle(self, type_: str, response: Json) -> None:
        # Deep copies: polls and resumes hand these objects out; nobody may alias another's output.
        self._add(type_, response=copy.deepcopy(response))

    def _plan(self, script: ResponseScript, limit: Any) -> tuple[list[_Planned], int | None]:
        """The items that get generated; with a ``max_output_tokens`` below the script's output,
        generation stops there (one token per fragment, reasoning counted whole) -> incomplete."""
        plan = [_Planned(i, item_fragments(i)) for i in script.items]
        if not isinstance(limit, int) or script.expected_output_tokens() <= limit:
            return plan, None
        budget, kept = limit, []
        for p in plan:
            if budget <= 0:
                break
            if isinstance(p.item, Reasoning):
                budget -= p.item.reasoning_tokens
                kept.append(p)
                continue
            p.cut = len(p.fragments) > budget
            p.fragments = p.fragments[:budget]
            budget -= len(p.fragments)
            kept.append(p)
            if p.cut:
                break
        return kept, limit

    def _item(self, index: int, p: _Planned, *, incomplete: bool) -> Json:
        status = "incomplete" if incomplete else "completed"
        if isinstance(p.item, Message):
            return self._message(index, p.fragments, status, p.item.phase)
        if isinstance(p.item, FunctionCall):
            return self._function_call(index, p.item, p.fragments, status)
        return self._reasoning(index, p.item)

    def _message(self, index: int, fragments: list[str], status: str, phase: str | None) -> Json:
        item_id, text = hex_id(self.ids, "msg", self.tail), "".join(fragments)
        ids: Json = {"item_id": item_id, "output_index": index}
        self._add("response.output_item.added", output_index=index,
                  item=message_item(item_id, "in_progress", [], phase))
        self._add("response.content_part.added", content_index=0, part=output_text(""), **ids)
        for frag in fragments:
            self._add("response.output_text.delta", content_index=0, delta=frag, logprobs=[], **ids)
        self._add("response.output_text.done", content_index=0, text=text, logprobs=[], **ids)
        self._add("response.content_part.done", content_index=0, part=output_text(text), **ids)
        done = message_item(item_id, status, [output_text(text)], phase)
        self._add("response.output_item.done", output_index=index, item=done)
        return done

    def _partial_message(self, index: int, text: str) -> None:
        """A message cut off by a failure: started, some deltas, never done (§6)."""
        item_id = hex_id(self.ids, "msg", self.tail)
        ids: Json = {"item_id": item_id, "output_index": index}
        self._add("response.output_item.added", output_index=index, item=message_item(item_id, "in_progress", []))
        self._add("response.content_part.added", content_index=0, part=output_text(""), **ids)
        for frag in split_text(text):
            self._add("response.output_text.delta", content_index=0, delta=frag, logprobs=[], **ids)

    def _function_call(self, index: int, call: FunctionCall, fragments: list[str], status: str) -> Json:
        item_id, arguments = hex_id(self.ids, "fc", self.tail), "".join(fragments)
        call_id = call.call_id or "call_" + self.ids.chars(24)
        self._add("response.output_item.added", output_index=index,
                  item=function_call_item(item_id, "in_progress", call_id, call.name, ""))
        for frag in fragments:
            self._add("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=frag)
        self._add("response.function_call_arguments.done", item_id=item_id, output_index=index,
                  arguments=arguments, name=call.name)
        done = function_call_item(item_id, status, call_id, call.name, arguments)
        self._add("response.output_item.done", output_index=index, item=done)
        return done

    def _reasoning(self, index: int, r: Reasoning) -> Json:
        item_id = hex_id(self.ids, "rs", self.tail)
        ids: Json = {"item_id": item_id, "output_index": index}
        self._add("response.output_item.added", output_index=index, item=reasoning_item(item_id, [], None))
        for n, part in enumerate(r.summary):
            self._add("response.reasoning_summary_part.added", summary_index=n, part=summary_text(""), **ids)
            for frag in split_text(part):
                self._add("response.reasoning_summary_text.delta", summary_index=n, delta=frag, **ids)
            self._add("response.reasoning_summary_text.done", summary_index=n, text=part, **ids)
            self._add("response.reasoning_summary_part.done", summary_index=n, part=summary_text(part), **ids)
        blob = "gAAAAAB" + self.ids.chars(120) if r.encrypted_content else None
        done = reasoning_item(item_id, list(r.summary), blob)
        self._add("response.output_item.done", output_index=index, item=done)
        return done
