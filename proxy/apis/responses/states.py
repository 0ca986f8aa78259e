"""What the Responses API records: a response and its items as the server reported them.

These are the recorded level of protocol-responses.md §11 (option C): facts, one `responses` row
per `resp_...` and one `response_items` row per output item (and per tool result a request
carried). The derived level, the turn, is a `RunState` with `api = "responses"` (stitch.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ...runs import RECORDED


@dataclass(slots=True)
class ResponseState:
    response_id: str
    run_id: str | None = None
    previous_response_id: str | None = None
    conversation_id: str | None = None
    model: str | None = None
    status: str | None = None
    background: bool | None = None
    store: bool | None = None
    service_tier: str | None = None
    key_id: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    input_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    incomplete_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    max_output_tokens: int | None = None
    link_kind: str | None = None
    """How the response joined its turn: previous_response_id, call_id, conversation, or none (it began it)."""
    trace_id: str | None = None
    request_id: str | None = None
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    calls: list[str] = field(default_factory=list)
    """call_ids of the function calls this response asked for, in output order."""
    items: dict[int, ResponseItemState] = field(default_factory=dict)
    """Output items by output_index."""
    delta_frames: list[bytes] = field(default_factory=list)
    """Delta frames of items not done yet (SSE bytes): read only if the stream breaks off."""


@dataclass(slots=True)
class ResponseItemState:
    item_id: str
    response_id: str | None
    source: str = "output"
    output_index: int | None = None
    type: str | None = None
    status: str | None = None
    role: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    text: str | None = None
    added_at: datetime | None = None
    done_at: datetime | None = None


RECORDED[ResponseState] = ("responses", (
    "response_id", "run_id", "previous_response_id", "conversation_id", "model", "status", "background", "store",
    "service_tier", "key_id", "created_at", "ended_at", "input_tokens", "cached_tokens", "cache_write_tokens",
    "output_tokens", "reasoning_tokens", "total_tokens", "incomplete_reason", "error_code", "error_message",
    "max_output_tokens", "trace_id", "request_id", "first_seen_at", "last_seen_at", "link_kind",
))
RECORDED[ResponseItemState] = ("response_items", (
    "item_id", "response_id", "source", "output_index", "type", "status", "role", "call_id", "name", "arguments",
    "output", "text", "added_at", "done_at",
))

RESPONSE_TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
CLIENT_CALLS = frozenset({"function_call", "custom_tool_call", "computer_call", "apply_patch_call",
                          "local_shell_call", "shell_call", "mcp_approval_request"})
"""Output items the client answers in its next request (§7): the turn waits for them. Each is
keyed by its `call_id`, an MCP approval request by its item id (`approval_request_id` answers it)."""
BUILTIN_TOOLS = frozenset({"web_search_call", "file_search_call", "code_interpreter_call", "mcp_call", "mcp_list_tools",
                           "image_generation_call"})
"""Output items of tools the service runs itself (§8): each an `execute_tool` span of its response."""
