"""The fake's Chat Completions: ``POST /chat/completions`` (protocol-responses.md §9).

Served at ``/v1/chat/completions``, Azure's v1 ``/openai/v1/chat/completions`` and Azure's
``/openai/deployments/{deployment}/chat/completions?api-version=`` (§1). Streams are data-only
frames ending with ``data: [DONE]``; with ``stream_options.include_usage`` every chunk carries
``usage: null`` and one more chunk with ``choices: []`` and the usage comes before ``[DONE]``.
Tool calls stream as ``delta.tool_calls``: the first fragment of each call has ``index``, ``id``,
``type`` and ``function{name, arguments: ""}``, later ones only ``{index, function{arguments}}``.
On Azure paths the chunks look like Azure's (§9): a first chunk with ``choices: []``, ``id: ""``,
``created: 0``, ``model: ""`` and ``prompt_filter_results``, ``content_filter_results`` on choices,
keys sorted, no ``obfuscation``. Chat is stateless: a tool result is a ``role: tool`` message
answering an earlier assistant ``tool_calls`` entry, validated the way the service does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.testing.engine import ApiError
from proxy.testing.faults import Fault
from proxy.testing.plumbing import FAULT, json_body
from proxy.testing.responses_objects import HEX, dated_model
from proxy.testing.responses_scripts import ChatScript, ChatScriptFactory, arguments_text
from proxy.testing.sse_frames import ChatShaper, finish, pump
from proxy.testing.streams import Json, split_arguments

if TYPE_CHECKING:
    from proxy.testing.fake_upstream import FakeUpstream

CHAT_KEYS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options"})
"""``completion_create_params.py`` of the installed SDK, plus ``stream``."""
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_SAFE = {"filtered": False, "severity": "safe"}
_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}


class ChatApi:
    def __init__(self, fake: FakeUpstream, clock: Callable[[], int], default_script: ChatScriptFactory) -> None:
        self.fake, self.clock, self.default_script = fake, clock, default_script
        self.scripts: deque[ChatScript] = deque()

    def add_routes(self, r: web.UrlDispatcher) -> None:
        for path in ("/v1/chat/completions", "/openai/v1/chat/completions",
                     "/openai/deployments/{deployment}/chat/completions"):
            r.add_post(path, self._create)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = json_body(request, CHAT_KEYS, legacy=True)
        deployment = request.match_info.get("deployment")
        if not isinstance(body.get("model"), str) and deployment is None:
            raise ApiError(400, "you must provide a model parameter")
        check_messages(body.get("messages"))
        stream = body.get("stream") is True
        if body.get("stream_options") is not None and not stream:
            raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options")
        script = self.scripts.popleft() if self.scripts else self.default_script(body)
        c = _Completion(self, body, script, azure=request.path.startswith("/openai/"),
                        model=script.model or dated_model(str(body.get("model") or deployment), azure=False))
        if not stream:
            return await self.fake._json(request, 200, c.body())
        fault: Fault | None = request[FAULT]
        shaper = ChatShaper(fault)
        wire = await self.fake._open(request, 200, {"Content-Type": "text/event-stream; charset=utf-8"})
        natural = await pump(wire, shaper, fault, _aiter(c.chunks(body)))
        await finish(wire, shaper, natural)
        return wire.resp


class _Completion:
    """One completion's ids, usage and output, rendered as a body or as chunks."""

    def __init__(self, api: ChatApi, body: Json, script: ChatScript, *, azure: bool, model: str) -> None:
        ids = api.fake.ids
        self.ids, self.script, self.azure, self.model = ids, script, azure, model
        self.id, self.created, self.fingerprint = "chatcmpl-" + ids.chars(29), api.clock(), "fp_" + ids.chars(10, HEX)
        self.calls = [(c.call_id or "call_" + ids.chars(24), c.name, arguments_text(c)) for c in script.calls]
        self.fragments = script.fragments()
        completion = script.expected_completion_tokens()
        self.finish_reason = script.finish_reason or ("tool_calls" if self.calls else "stop")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and completion > limit and not self.calls:  # cut off: finish_reason length
            self.fragments, completion, self.finish_reason = self.fragments[:limit], limit, "length"
        prompt = script.prompt_tokens if script.prompt_tokens is not None else prompt_tokens(body["messages"])
        self.usage = {
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(script.cached_tokens, prompt), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": script.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def _tool_calls(self) -> list[Json]:
        return [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in self.calls]

    def body(self) -> Json:
        text = "".join(self.fragments) if self.script.text is not None else None
        message: Json = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        if self.calls:
            message["tool_calls"] = self._tool_calls()
        choice: Json = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        out: Json = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                     "choices": [choice], "usage": self.usage, "service_tier": "default",
                     "system_fingerprint": self.fingerprint}
        if self.azure:
            choice["content_filter_results"] = _FILTERS
            out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
            out.pop("service_tier")
            return _sorted(out)
        return out

    def chunks(self, body: Json) -> list[tuple[str, Json, bool]]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obfuscate = not self.azure and (body.get("stream_options") or {}).get("include_obfuscation") is not False
        deltas: list[tuple[Json, Any]] = []
        if self.calls:
            for index, (call_id, name, arguments) in enumerate(self.calls):
                head: Json = {"index": index, "id": call_id, "type": "function",
                              "function": {"name": name, "arguments": ""}}
                first = {"role": "assistant", "content": None, "tool_calls": [head], "refusal": None}
                deltas.append((first if index == 0 else {"tool_calls": [head]}, None))
                deltas += [({"tool_calls": [{"index": index, "function": {"arguments": frag}}]}, None)
                           for frag in split_arguments(arguments)]
        else:
            deltas.append(({"role": "assistant", "content": "", "refusal": None}, None))
            deltas += [({"content": frag}, None) for frag in self.fragments]
        deltas.append(({}, self.finish_reason))
        out: list[Json] = []
        if self.azure:
            out.append({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _FILTERS}]})
        for delta, reason in deltas:
            choice: Json = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            if self.azure:
                choice["content_filter_results"] = _FILTERS if delta.get("content") else {}
            # §9: padding on every chunk; short content gets longer padding (it normalises sizes)
            pad = max(2, 16 - len(delta.get("content") or "")) if obfuscate else 0
            out.append(self._chunk([choice], include_usage, None, pad))
        if include_usage:
            out.append(self._chunk([], include_usage, self.usage, 8 if obfuscate else 0))
        return [("chat.completion.chunk", c, n == len(out) - 1) for n, c in enumerate(out)]

    def _chunk(self, choices: list[Json], include_usage: bool, usage: Json | None, pad: int) -> Json:
        chunk: Json = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "service_tier": "default", "system_fingerprint": self.fingerprint, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        if self.azure:
            chunk.pop("service_tier")
            return _sorted(chunk)
        if pad:
            chunk["obfuscation"] = self.ids.chars(pad)
        return chunk


def check_messages(messages: Any) -> None:
    """Roles, and the tool round trip: every assistant ``tool_calls`` id answered by a following
    ``role: tool`` message, and no tool message without one (the service's own wording)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages",
                       code="missing_required_parameter")
    waiting: dict[str, int] = {}
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise ApiError(400, f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                                "'function', 'tool', and 'developer'.", param=f"messages[{n}].role",
                           code="invalid_value")
        if waiting and m["role"] != "tool":
            _unanswered(waiting)
        if m["role"] == "assistant" and m.get("tool_calls"):
            waiting = {str(tc.get("id")): n for tc in m["tool_calls"] if isinstance(tc, dict)}
        elif m["role"] == "tool":
            if m.get("tool_call_id") not in waiting:
                raise ApiError(400, "Invalid parameter: messages with role 'tool' must be a response to a "
                                    "preceeding message with 'tool_calls'.", param=f"messages.[{n}].role")
            del waiting[m["tool_call_id"]]
    if waiting:
        _unanswered(waiting)


def _unanswered(waiting: dict[str, int]) -> None:
    index = next(iter(waiting.values()))
    raise ApiError(400, "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                        + ", ".join(waiting), param=f"messages.[{index}].role")


def prompt_tokens(messages: list[Json]) -> int:
    """The same ~4-characters-a-token estimate as the Responses fake, 4 per message on top."""
    total = 0
    for m in messages:
        content = m.get("content")
        texts = [content] if isinstance(content, str) else [
            p.get("text", "") for p in content or [] if isinstance(p, dict)]
        texts += [tc.get("function", {}).get("arguments", "") for tc in m.get("tool_calls") or []]
        total += 4 + sum((len(t) + 3) // 4 for t in texts if isinstance(t, str))
    return max(1, total)


def _sorted(value: Any) -> Any:
    """Azure's chat bodies have their keys sorted at every level (§9)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


async def _aiter(items: list[tuple[str, Json, bool]]) -> AsyncIterator[tuple[str, Json, bool]]:
    for item in items:
        yield item
