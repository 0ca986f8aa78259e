"""Scripts for the Responses API and Chat Completions fakes: what the next response will say.

A Responses script is the list of *output items* one response produces (protocol-responses.md §3:
messages, reasoning, function calls) plus how it ends (completed, incomplete, failed; §4, §6).
Unlike an Assistants run there is no pause: a function call is an item of a *completed* response
and the client answers in its next request (§7), so a tool loop is two scripts, one per request.
Token usage is derived from the script (or declared), which lets tests check accounting.

Usage::

    fake.enqueue_response(ResponseScript.function_call("get_weather", {"city": "Paris"}))
    fake.enqueue_response(ResponseScript.text("18 degrees and sunny.", input_tokens=80))
    fake.enqueue_chat(ChatScript.tool_calls(("get_weather", {"city": "Paris"})))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from proxy.testing.scripts import FunctionCall, _example_arguments
from proxy.testing.streams import Json, split_arguments, split_text

__all__ = ["ChatScript", "Failure", "FunctionCall", "Message", "Reasoning", "ResponseScript"]

IncompleteReason = Literal["max_output_tokens", "content_filter"]


@dataclass(frozen=True)
class Message:
    """An assistant ``message`` item with one ``output_text`` part, streamed as word-like deltas."""

    text: str
    chunks: int | None = None
    """Number of ``response.output_text.delta`` events; ``None`` splits into word-like pieces."""
    phase: Literal["commentary", "final_answer"] | None = None
    """Sent as the item's ``phase`` when set (protocol-responses.md §4, item status values)."""

    def fragments(self) -> list[str]:
        return split_text(self.text, self.chunks)


@dataclass(frozen=True)
class Reasoning:
    """A ``reasoning`` item (``rs_...``). Without ``summary`` it is just ``output_item.added``
    then ``.done`` with ``summary: []`` (protocol-responses.md §3); each summary part streams
    ``reasoning_summary_part.added`` / ``_text.delta*`` / ``_text.done`` / ``_part.done``."""

    summary: tuple[str, ...] = ()
    reasoning_tokens: int = 64
    """Counted in ``output_tokens`` and ``output_tokens_details.reasoning_tokens``."""
    encrypted_content: bool = True
    """Recorded streams carry an ``encrypted_content`` blob even when ``include`` did not ask."""


OutputItem = Message | Reasoning | FunctionCall


@dataclass(frozen=True)
class Failure:
    """The response fails mid-generation: an in-band ``error`` event, then ``response.failed``
    under HTTP 200 (protocol-responses.md §6). ``partial_text`` streams first, unfinished."""

    code: str = "server_error"
    message: str = "An error occurred while processing your request. You can retry your request."
    type: str = "server_error"
    partial_text: str | None = None


@dataclass(frozen=True)
class ResponseScript:
    """Output items plus outcome. Immutable; build with the classmethods."""

    items: tuple[OutputItem, ...] = ()
    input_tokens: int | None = None
    """``None``: estimated from the whole context (chain or conversation + input), so a follow-up
    naturally reports more input than the request before it (protocol-responses.md §7)."""
    cached_tokens: int = 0
    output_tokens: int | None = None
    """``None``: one token per streamed fragment plus the reasoning tokens."""
    cache_write_tokens: int | None = None
    """Adds ``input_tokens_details.cache_write_tokens`` (declared in the types, rarely recorded)."""
    incomplete: IncompleteReason | None = None
    """End ``incomplete`` with this reason. A request whose ``max_output_tokens`` is below the
    script's output tokens ends ``incomplete``/``max_output_tokens`` on its own (§4)."""
    failure: Failure | None = None
    model: str | None = None
    """Overrides the response's ``model`` (otherwise the request's, dated on OpenAI paths)."""

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def of(cls, *items: OutputItem, **options: Any) -> ResponseScript:
        return cls(items=tuple(items), **options)

    @classmethod
    def text(cls, text: str = "Hello! How can I help you today?", *, chunks: int | None = None,
             **options: Any) -> ResponseScript:
        return cls.of(Message(text, chunks), **options)

    @classmethod
    def function_call(cls, name: str = "get_weather", arguments: dict[str, Any] | str | None = None,
                      call_id: str | None = None, **options: Any) -> ResponseScript:
        """One ``function_call`` item; the response still ends ``completed`` (§7)."""
        args = {"city": "Paris"} if arguments is None else arguments
        return cls.of(FunctionCall(name, args, call_id), **options)

    @classmethod
    def function_calls(cls, *calls: tuple[str, dict[str, Any] | str], **options: Any) -> ResponseScript:
        """Parallel calls: several ``function_call`` items, each with its own ``call_id``."""
        return cls.of(*(FunctionCall(name, args) for name, args in calls), **options)

    @classmethod
    def failed(cls, code: str = "server_error", message: str | None = None, *,
               partial_text: str | None = None, **options: Any) -> ResponseScript:
        failure = Failure(code, message or Failure.message, partial_text=partial_text)
        return cls(failure=failure, **options)

    # -- composition ----------------------------------------------------------------------------
    def then(self, *items: OutputItem) -> ResponseScript:
        return replace(self, items=self.items + tuple(items))

    def ending_incomplete(self, reason: IncompleteReason = "max_output_tokens") -> ResponseScript:
        return replace(self, incomplete=reason)

    def with_usage(self, **usage: int | None) -> ResponseScript:
        """E.g. ``with_usage(input_tokens=50, cached_tokens=20, output_tokens=30)``."""
        return replace(self, **usage)  # type: ignore[arg-type]

    def with_model(self, model: str) -> ResponseScript:
        return replace(self, model=model)

    # -- expectations for tests -------------------------------------------------------------------
    def reasoning_tokens(self) -> int:
        return sum(i.reasoning_tokens for i in self.items if isinstance(i, Reasoning))

    def fragment_tokens(self) -> int:
        """Visible output: text and argument fragments (summaries ride on the reasoning tokens)."""
        return sum(len(item_fragments(i)) for i in self.items if not isinstance(i, Reasoning))

    def expected_output_tokens(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return self.fragment_tokens() + self.reasoning_tokens()


def item_fragments(item: OutputItem) -> list[str]:
    """The deltas an item streams: text pieces, argument pieces, or summary pieces."""
    if isinstance(item, Message):
        return item.fragments()
    if isinstance(item, FunctionCall):
        return split_arguments(arguments_text(item))
    return [piece for part in item.summary for piece in split_text(part)]


def arguments_text(call: FunctionCall) -> str:
    """Function arguments as the JSON string the wire carries (``str`` scripts malformed JSON)."""
    return call.arguments if isinstance(call.arguments, str) else orjson.dumps(call.arguments).decode()


ResponseScriptFactory = Callable[[Json], ResponseScript]
"""Chooses the script from the create request body when the queue is empty."""


def default_response_script(body: Json) -> ResponseScript:
    """The queue-empty default for tests: a short streamed text answer (usage derived)."""
    return ResponseScript.text()


# -- Chat Completions -------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatScript:
    """One chat completion: ``text`` (streamed as ``delta.content`` pieces) or ``calls`` (streamed
    as ``delta.tool_calls`` fragments, ``finish_reason: tool_calls``; protocol-responses.md §9)."""

    text: str | None = "Hello! How can I help you today?"
    calls: tuple[FunctionCall, ...] = ()
    prompt_tokens: int | None = None
    """``None``: estimated from the messages."""
    completion_tokens: int | None = None
    """``None``: one per streamed fragment plus ``reasoning_tokens``."""
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None
    """``None``: ``tool_calls`` when there are calls, else ``stop``."""
    chunks: int | None = None
    model: str | None = None

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict[str, Any] | str], **options: Any) -> ChatScript:
        return cls(text=None, calls=tuple(FunctionCall(n, a) for n, a in calls), **options)

    def fragments(self) -> list[str]:
        return split_text(self.text, self.chunks) if self.text else []

    def expected_completion_tokens(self) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens
        args = sum(len(split_arguments(arguments_text(c))) for c in self.calls)
        return len(self.fragments()) + args + self.reasoning_tokens


ChatScriptFactory = Callable[[Json], ChatScript]


def default_chat_script(body: Json) -> ChatScript:
    return ChatScript()


# -- served fakes ------------------------------------------------------------------------------
TOOL_ANSWER = "It is currently 18°C and sunny in San Francisco."
_DEMO_ANSWERS = (
    "Deep learning is a way for computers to learn patterns from lots of examples.",
    "Sure! Take a short walk, drink a glass of water, and stretch for a minute.",
    "The capital of Australia is Canberra, not Sydney as many people assume.",
    "Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year exhales slow.",
)


@dataclass
class _Cycle:
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def next_answer(self) -> str:
        return _DEMO_ANSWERS[next(self.counter) % len(_DEMO_ANSWERS)]


class DemoResponseScripts(_Cycle):
    """For ``runtap fake-upstream`` / ``make demo``: a client-side tool loop when the request
    declares function tools and carries no tool output yet, else a cycling text answer."""

    def __call__(self, body: Json) -> ResponseScript:
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        items = body.get("input") if isinstance(body.get("input"), list) else []
        answered = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
        if tools and not answered:
            return ResponseScript.function_call(tools[0].get("name", "get_weather"), _example_arguments(tools[0]))
        if answered:  # the same answer as the Assistants demo's tool run (scripts.DemoScripts)
            return ResponseScript.text(TOOL_ANSWER)
        return ResponseScript.text(self.next_answer())


class DemoChatScripts(_Cycle):
    """The Chat flavour of :class:`DemoResponseScripts` (a ``role: tool`` message = answered)."""

    def __call__(self, body: Json) -> ChatScript:
        tools = [t["function"] for t in body.get("tools") or []
                 if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        answered = any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)
        if tools and not answered:
            return ChatScript.tool_calls((tools[0].get("name", "get_weather"), _example_arguments(tools[0])))
        return ChatScript(TOOL_ANSWER if answered else self.next_answer())
