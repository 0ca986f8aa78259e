"""OpenTelemetry GenAI semantic conventions, pinned at v1.41.0 (protocol.md §7).

The names are constants here rather than imports from `opentelemetry.semconv._incubating`: the
GenAI conventions are still Development, moved to their own repository after v1.41.0 and are
being renamed there (§7.1, §7.3). Pinning them in one file keeps spans, metrics and dashboards
in step; tests/proxy/test_semconv.py checks each name against the installed semconv package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # spans imports the OpenTelemetry SDK, which metrics (importing this) must not pay for
    from .spans import SpanRecord

SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"

# -- span attributes ---------------------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
OPENAI_API_TYPE = "openai.api.type"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"

# -- well-known values -------------------------------------------------------------------------
OP_INVOKE_AGENT = "invoke_agent"
OP_CHAT = "chat"
OP_EXECUTE_TOOL = "execute_tool"
PROVIDER_OPENAI = "openai"
PROVIDER_AZURE_OPENAI = "azure.ai.openai"
"""Not `azure.openai` (protocol.md §7.2)."""
TOKEN_INPUT = "input"
TOKEN_OUTPUT = "output"
TOKEN_CACHED = "cached"
"""runtap_tokens_total only: cached input tokens (a part of `input`); not a semconv token type."""
TOKEN_REASONING = "reasoning"
"""runtap_tokens_total only: reasoning output tokens (a part of `output`)."""
ERROR_OTHER = "_OTHER"
TOOL_TYPES = {"function": "function", "code_interpreter": "extension", "file_search": "datastore"}
"""Assistants tool type → `gen_ai.tool.type`: function tools run on the client, the built-ins on
the agent's side (code_interpreter) or as retrieval (file_search), protocol.md §7.2."""
TOOL_TYPE_FUNCTION = "function"
OPENAI_API_TYPES = {"responses": "responses", "chat": "chat_completions"}
"""runtap's API name → `openai.api.type`."""


def builtin_tool_type(item_type: str) -> str:
    """`gen_ai.tool.type` of a Responses built-in tool item: retrieval is a datastore, the rest extensions."""
    return "datastore" if item_type == "file_search_call" else "extension"

# -- metrics (Prometheus names after the standard OTel normalisation, §7.3) ---------------------
TOKEN_USAGE_METRIC = "gen_ai_client_token_usage"
OPERATION_DURATION_METRIC = "gen_ai_client_operation_duration_seconds"
TIME_TO_FIRST_CHUNK_METRIC = "gen_ai_client_operation_time_to_first_chunk_seconds"
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


def provider_for_path(path: str) -> str:
    """Azure OpenAI serves Assistants under `/openai/...` (contract §3); everything else is OpenAI."""
    return PROVIDER_AZURE_OPENAI if path.startswith("/openai/") else PROVIDER_OPENAI


def record_error(span: SpanRecord, error_type: str, description: str | None = None) -> None:
    """Semconv's "recording errors": `error.type` plus an Error status."""
    span.attributes[ERROR_TYPE] = error_type
    span.error = description or error_type


def exchange_error_type(status: int | None, outcome: str | None) -> str:
    """`error.type` of a run-creating request that made no run: the HTTP status when it was an
    error, else how the exchange broke off (`truncated`, `client_gone`), else `_OTHER`."""
    if status is not None and status >= 400:
        return str(status)
    if outcome is not None and outcome != "completed":
        return outcome
    return ERROR_OTHER


def finish_reason(status: str, incomplete_reason: str | None) -> str | None:
    """`gen_ai.response.finish_reasons` of a run: `stop`, or `length` when it ran out of tokens."""
    if status == "completed":
        return "stop"
    if status == "incomplete":
        return "length" if (incomplete_reason or "").startswith("max_") else incomplete_reason or "incomplete"
    return None


def input_content(body: dict[str, Any]) -> dict[str, str]:
    """Opt-in content from a run-creating request: instructions and the messages it adds."""
    out: dict[str, str] = {}
    if isinstance(body.get("instructions"), str):
        out[GEN_AI_SYSTEM_INSTRUCTIONS] = orjson.dumps([{"type": "text", "content": body["instructions"]}]).decode()
    messages = (body.get("thread") or {}).get("messages") or body.get("additional_messages")
    if isinstance(messages, list) and messages:
        out[GEN_AI_INPUT_MESSAGES] = orjson.dumps([_message(m) for m in messages if isinstance(m, dict)]).decode()
    return out


def turn_input_content(body: dict[str, Any]) -> dict[str, str]:
    """Opt-in content from a Responses create or a Chat request: instructions, and the messages and
    tool results it sends (a Responses `input` string is one user message)."""
    out: dict[str, str] = {}
    if isinstance(body.get("instructions"), str):
        out[GEN_AI_SYSTEM_INSTRUCTIONS] = orjson.dumps([{"type": "text", "content": body["instructions"]}]).decode()
    items = body.get("input", body.get("messages"))
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        if "role" in item:
            messages.append(_message(item))
        elif isinstance(item.get("type"), str) and item["type"].endswith("_output"):
            messages.append({"role": "tool", "parts": [{"type": "tool_call_response", "id": item.get("call_id"),
                                                        "response": item.get("output")}]})
    if messages:
        out[GEN_AI_INPUT_MESSAGES] = orjson.dumps(messages).decode()
    return out


def _message(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "content": content}]
    else:
        parts = [{"type": "text", "content": p["text"]} for p in content if isinstance(p, dict)
                 and isinstance(p.get("text"), str)] if isinstance(content, list) else []
    if m.get("role") == "tool" and isinstance(m.get("tool_call_id"), str):  # a Chat tool result
        parts = [{"type": "tool_call_response", "id": m["tool_call_id"], "response": content}]
    return {"role": m.get("role"), "parts": parts}


def output_messages(text: str) -> str:
    """`gen_ai.output.messages` for one assistant message (opt-in content)."""
    return orjson.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}]).decode()
