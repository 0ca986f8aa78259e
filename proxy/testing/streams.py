"""Builders for realistic Assistants v2 objects and SSE frames (protocol.md §1-3).

These are the factories behind the fake upstream, and tests can use them directly to craft
streams by hand. They are deliberately *stricter* than the published examples (protocol.md §1.4):
compact valid JSON, a ``data:`` line on every event, a blank line after every event, and
``event: done`` / ``data: [DONE]`` at the end. Field order follows the documented examples so
recorded bytes look like the real thing.
"""

from __future__ import annotations

import random
import re
import string
import time
from typing import Any

import orjson

Json = dict[str, Any]

BASE62 = string.ascii_letters + string.digits
RUN_TTL_S = 600
"""``expires_at = created_at + 600`` in every documented example."""

DONE_FRAME = b"event: done\ndata: [DONE]\n\n"

RUN_STATUS_EVENTS = frozenset(
    {
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.requires_action",
        "thread.run.completed",
        "thread.run.incomplete",
        "thread.run.failed",
        "thread.run.cancelling",
        "thread.run.cancelled",
        "thread.run.expired",
    }
)
TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled", "expired"})
PAUSE_OR_TERMINAL = TERMINAL_STATUSES | {"requires_action"}
ACTIVE_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})


class Ids:
    """Realistic, optionally reproducible ids: ``run_`` + 24 base62 chars, ``req_`` + 32 hex.

    A seeded instance makes a whole fake session deterministic, which golden-file tests want.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def new(self, prefix: str, length: int = 24) -> str:
        return prefix + "_" + "".join(self._rng.choices(BASE62, k=length))

    def request_id(self) -> str:
        return "req_" + "".join(self._rng.choices("0123456789abcdef", k=32))

    def chars(self, length: int, alphabet: str = BASE62) -> str:
        """Random characters from the same seeded stream (hex ids, obfuscation padding)."""
        return "".join(self._rng.choices(alphabet, k=length))


def now() -> int:
    """Unix seconds, the unit of every Assistants timestamp."""
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> Json:
    """A usage object whose ``total_tokens`` is always consistent."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def add_usage(a: Json | None, b: Json | None) -> Json | None:
    """Sum two usage objects (``None`` is the identity), for cumulative run usage."""
    if a is None:
        return None if b is None else usage(b["prompt_tokens"], b["completion_tokens"])
    if b is None:
        return usage(a["prompt_tokens"], a["completion_tokens"])
    return usage(a["prompt_tokens"] + b["prompt_tokens"], a["completion_tokens"] + b["completion_tokens"])


def dumps(data: Any) -> bytes:
    """Compact JSON, as the API and its spec examples write it."""
    return orjson.dumps(data)


def sse(event: str, data: Json | str) -> bytes:
    """One canonical SSE frame: ``event: X\\ndata: Y\\n\\n`` (a str ``data`` is written verbatim)."""
    payload = data.encode() if isinstance(data, str) else dumps(data)
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> Json:
    """The OpenAI error shape; all four keys are always present (protocol.md §5.3)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def thread_object(ids: Ids, *, thread_id: str | None = None, created_at: int | None = None,
                  metadata: Json | None = None, tool_resources: Json | None = None) -> Json:
    return {
        "id": thread_id or ids.new("thread"),
        "object": "thread",
        "created_at": now() if created_at is None else created_at,
        "metadata": metadata or {},
        "tool_resources": tool_resources or {},
    }


def run_object(ids: Ids, *, thread_id: str, assistant_id: str | None = None, run_id: str | None = None,
               status: str = "queued", created_at: int | None = None, model: str = "gpt-4o",
               instructions: str | None = "You are a helpful assistant.", tools: list[Json] | None = None,
               tool_resources: Json | None = None, metadata: Json | None = None,
               temperature: float | None = 1.0, top_p: float | None = 1.0,
               max_prompt_tokens: int | None = None, max_completion_tokens: int | None = None,
               truncation_strategy: Json | None = None, response_format: Any = "auto",
               tool_choice: Any = "auto", parallel_tool_calls: bool = True) -> Json:
    """A ``thread.run`` snapshot in the field order of the documented examples (queued by default)."""
    created = now() if created_at is None else created_at
    return {
        "id": run_id or ids.new("run"),
        "object": "thread.run",
        "created_at": created,
        "assistant_id": assistant_id or ids.new("asst"),
        "thread_id": thread_id,
        "status": status,
        "started_at": None,
        "expires_at": created + RUN_TTL_S,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "required_action": None,
        "last_error": None,
        "model": model,
        "instructions": instructions,
        "tools": tools or [],
        "tool_resources": tool_resources or {},
        "metadata": metadata or {},
        "temperature": temperature,
        "top_p": top_p,
        "max_completion_tokens": max_completion_tokens,
        "max_prompt_tokens": max_prompt_tokens,
        "truncation_strategy": truncation_strategy or {"type": "auto", "last_messages": None},
        "incomplete_details": None,
        "usage": None,
        "response_format": response_format,
        "tool_choice": tool_choice,
        "parallel_tool_calls": parallel_tool_calls,
    }


def step_object(ids: Ids, *, run: Json, step_details: Json, step_id: str | None = None,
                created_at: int | None = None) -> Json:
    """An in-progress ``thread.run.step``. Uses the schema's ``expired_at`` (the docs' samples
    say ``expires_at``; protocol.md §1.4)."""
    return {
        "id": step_id or ids.new("step"),
        "object": "thread.run.step",
        "created_at": now() if created_at is None else created_at,
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": step_details["type"],
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": step_details,
        "usage": None,
        "metadata": {},
    }


def message_object(ids: Ids, *, thread_id: str, role: str = "assistant", content: list[Json] | None = None,
                   status: str = "in_progress", message_id: str | None = None,
                   assistant_id: str | None = None, run_id: str | None = None,
                   created_at: int | None = None, attachments: list[Json] | None = None,
                   metadata: Json | None = None) -> Json:
    """A ``thread.message``; assistant messages start ``in_progress`` with empty content."""
    created = now() if created_at is None else created_at
    return {
        "id": message_id or ids.new("msg"),
        "object": "thread.message",
        "created_at": created,
        "assistant_id": assistant_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "status": status,
        "incomplete_details": None,
        "incomplete_at": None,
        "completed_at": created if status == "completed" else None,
        "role": role,
        "content": content or [],
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def text_content(value: str) -> Json:
    return {"type": "text", "text": {"value": value, "annotations": []}}


def normalise_content(content: str | list[Json]) -> list[Json]:
    """Turn a create-message ``content`` (str or input parts) into stored content parts."""
    if isinstance(content, str):
        return [text_content(content)]
    parts: list[Json] = []
    for part in content:
        if part.get("type") == "text":
            parts.append(text_content(str(part.get("text", ""))))
        else:
            parts.append(part)
    return parts


def message_delta(message_id: str, fragment: str, *, first: bool, index: int = 0) -> Json:
    """The first delta of a content part carries ``annotations: []``; later ones only ``value``."""
    text: Json = {"value": fragment, "annotations": []} if first else {"value": fragment}
    return {
        "id": message_id,
        "object": "thread.message.delta",
        "delta": {"content": [{"index": index, "type": "text", "text": text}]},
    }


def step_delta(step_id: str, tool_calls: list[Json]) -> Json:
    return {
        "id": step_id,
        "object": "thread.run.step.delta",
        "delta": {"step_details": {"type": "tool_calls", "tool_calls": tool_calls}},
    }


_WORDISH = re.compile(r"\s*\S+|\s+")
_JSONISH = re.compile(r"\s*[A-Za-z0-9_.\-]+|\s*[^A-Za-z0-9_.\-\s]+|\s+")


def _split(text: str, pattern: re.Pattern[str], chunks: int | None) -> list[str]:
    if not text:
        return []
    if chunks is not None:
        n = max(1, min(chunks, len(text)))
        size, extra = divmod(len(text), n)
        out, pos = [], 0
        for i in range(n):
            step = size + (1 if i < extra else 0)
            out.append(text[pos:pos + step])
            pos += step
        return out
    pieces = pattern.findall(text)
    if len(pieces) == 1 and len(text) > 1:  # a single word still streams as several deltas
        mid = len(text) // 2
        pieces = [text[:mid], text[mid:]]
    return pieces


def split_text(text: str, chunks: int | None = None) -> list[str]:
    """Split answer text into word-like deltas ("Hello", " How", ...); joins back exactly."""
    return _split(text, _WORDISH, chunks)


def split_arguments(arguments: str, chunks: int | None = None) -> list[str]:
    """Split a JSON arguments string into token-like fragments (``{"``, ``location``, ``":"``)."""
    return _split(arguments, _JSONISH, chunks)


def function_call_deltas(step_id: str, index: int, call_id: str, name: str, arguments: str) -> list[Json]:
    """First fragment: index, id, type, name, ``arguments: ""``, ``output: null`` (protocol.md §1.3);
    then one delta per arguments fragment carrying only index, type and the fragment."""
    out = [step_delta(step_id, [{"index": index, "id": call_id, "type": "function",
                                 "function": {"name": name, "arguments": "", "output": None}}])]
    for frag in split_arguments(arguments):
        out.append(step_delta(step_id, [{"index": index, "type": "function",
                                         "function": {"arguments": frag}}]))
    return out
