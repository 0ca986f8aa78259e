"""Builders for Responses API objects, items and stream events (protocol-responses.md §2-4).

Field order follows recorded bodies so recorded bytes look like the real thing, and varies the way
the live service's does: lifecycle and ``error`` events put ``sequence_number`` second, every other
event lists its fields alphabetically after ``type`` (so ``sequence_number`` lands anywhere --
§2 says never locate it by offset). Ids are ``prefix_`` + 50 hex; the items of one response share
its last 16 hex digits, as recorded ids do (§7, "[inference, weak]"), which catches anyone pairing
ids by prefix instead of comparing whole strings.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.testing.engine import ApiError
from proxy.testing.streams import Ids, Json

HEX = "0123456789abcdef"
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
LIFECYCLE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"}) | TERMINAL_EVENTS
OBFUSCATED_EVENTS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                               "response.reasoning_summary_text.delta"})
"""Delta events that carry ``obfuscation`` padding in non-background OpenAI streams (§2)."""

_SNAPSHOTS = {"gpt-4o": "2024-08-06", "gpt-4o-mini": "2024-07-18", "gpt-4.1": "2025-04-14",
              "gpt-4.1-mini": "2025-04-14", "gpt-4.1-nano": "2025-04-14", "o3": "2025-04-16",
              "o4-mini": "2025-04-16", "gpt-5": "2025-08-07", "gpt-5-mini": "2025-08-07",
              "gpt-5-nano": "2025-08-07"}
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_ROLES = ("user", "assistant", "system", "developer")
CREATE_KEYS = frozenset({
    "background", "conversation", "include", "input", "instructions", "max_output_tokens", "max_tool_calls",
    "metadata", "model", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
    "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation",
    "user", "context_management", "moderation", "prompt_cache_options", "background_options",
    "access_programs", "image"})
"""``response_create_params.py`` of the installed SDK, plus ``stream``."""


def dated_model(model: str, *, azure: bool) -> str:
    """OpenAI answers with the dated snapshot (``gpt-4o`` -> ``gpt-4o-2024-08-06``); Azure with the
    deployment name it was asked for (§4 ``model``)."""
    if azure or _DATED.search(model) or model not in _SNAPSHOTS:
        return model
    return f"{model}-{_SNAPSHOTS[model]}"


def hex_id(ids: Ids, prefix: str, tail: str) -> str:
    return f"{prefix}_{ids.chars(34, HEX)}{tail}"


def usage_object(input_tokens: int, cached_tokens: int, output_tokens: int, reasoning_tokens: int,
                 cache_write_tokens: int | None = None) -> Json:
    """``ResponseUsage`` (§4): cached within input, reasoning within output, total consistent."""
    details: Json = {"cached_tokens": min(cached_tokens, input_tokens)}
    if cache_write_tokens is not None:
        details["cache_write_tokens"] = cache_write_tokens
    return {"input_tokens": input_tokens, "input_tokens_details": details, "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, output_tokens)},
            "total_tokens": input_tokens + output_tokens}


def response_object(*, response_id: str, created_at: int, status: str, body: Json, model: str,
                    conversation_id: str | None) -> Json:
    """A ``response`` as ``response.created`` carries it: empty output, ``usage: null``,
    ``service_tier: auto`` (the terminal event says ``default``, §4)."""
    tools = [_echo_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": bool(body.get("background")),
        "completed_at": None,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "presence_penalty": 0.0,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier") or "auto",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools,
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _echo_tool(tool: Json) -> Json:
    """Function tools come back with ``description`` and ``strict`` filled in, as recorded."""
    if tool.get("type") != "function":
        return tool
    return {"type": "function", "description": None, **tool, "strict": tool.get("strict", True)}


def event(type_: str, seq: int, **fields: Any) -> Json:
    """One stream event in the recorded key order (see the module docstring)."""
    if type_ in LIFECYCLE_EVENTS or type_ == "error":
        return {"type": type_, "sequence_number": seq, **fields}
    fields["sequence_number"] = seq
    return {"type": type_, **dict(sorted(fields.items()))}


# -- output items -------------------------------------------------------------------------------
def output_text(text: str) -> Json:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, status: str, content: list[Json], phase: str | None = None) -> Json:
    item: Json = {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}
    if phase is not None:
        item["phase"] = phase
    return item


def function_call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> Json:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": name}


def reasoning_item(item_id: str, summary: list[str], encrypted: str | None) -> Json:
    item: Json = {"id": item_id, "type": "reasoning", "summary": [summary_text(s) for s in summary]}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def summary_text(text: str) -> Json:
    return {"type": "summary_text", "text": text}


# -- input --------------------------------------------------------------------------------------
def normalise_input(ids: Ids, tail: str, raw: Any, param: str = "input") -> list[Json]:
    """The request's ``input`` (a string or items) as stored items with ids, the way
    ``GET /responses/{id}/input_items`` lists them; validates what the service validates."""
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise ApiError(400, f"Invalid type for '{param}': expected one of a string or an array of input "
                            "items.", param=param, code="invalid_type")
    return [_input_item(ids, tail, item, f"{param}[{n}]") for n, item in enumerate(raw)]


def _input_item(ids: Ids, tail: str, item: Any, param: str) -> Json:
    if not isinstance(item, dict):
        raise ApiError(400, f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise ApiError(400, f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', "
                                "'developer', and 'user'.", param=f"{param}.role", code="invalid_value")
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if role == "assistant" else "input_text"
            content = [output_text(content) if part == "output_text" else {"type": part, "text": content}]
        if not isinstance(content, list):
            raise ApiError(400, f"Missing required parameter: '{param}.content'.", param=f"{param}.content",
                           code="missing_required_parameter")
        return {"id": item.get("id") or hex_id(ids, "msg", tail), "type": "message",
                "status": item.get("status", "completed"), "content": content, "role": role}
    if kind == "function_call_output":
        for key in ("call_id", "output"):
            if key not in item:
                raise ApiError(400, f"Missing required parameter: '{param}.{key}'.", param=f"{param}.{key}",
                               code="missing_required_parameter")
        if not isinstance(item["output"], str | list):
            raise ApiError(400, f"Invalid type for '{param}.output': expected one of a string or an array.",
                           param=f"{param}.output", code="invalid_type")
        return {"id": item.get("id") or hex_id(ids, "fco", tail), "type": kind, "call_id": item["call_id"],
                "output": item["output"], "status": item.get("status", "completed")}
    if not isinstance(kind, str):
        raise ApiError(400, f"Missing required parameter: '{param}.type'.", param=f"{param}.type",
                       code="missing_required_parameter")
    return dict(item)  # replayed function_call / reasoning / other items are kept as sent


def item_texts(item: Json) -> list[str]:
    """The text a model reads from an item (for the token estimate)."""
    texts: list[str] = []
    for key in ("arguments", "name", "output"):
        if isinstance(item.get(key), str):
            texts.append(item[key])
    for part in item.get("content") or item.get("summary") or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return texts


def estimate_tokens(items: list[Json], instructions: Any = None) -> int:
    """A deterministic stand-in for a tokenizer: ~4 characters a token plus 4 per item, so more
    context always costs more (the same figure ``POST /responses/input_tokens`` reports)."""
    total = len(instructions) // 4 + 4 if isinstance(instructions, str) else 0
    for item in items:
        total += 4 + sum((len(t) + 3) // 4 for t in item_texts(item))
    return max(1, total)
