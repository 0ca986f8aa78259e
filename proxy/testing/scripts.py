"""Scripts: what the next run on the fake upstream will do.

A run is a sequence of *turns* (one model call each, one run step each) followed by an
*outcome*. A :class:`ToolRound` pauses the run in ``requires_action`` until the client submits
outputs, exactly like the real API, so one script can span several HTTP streams. Token usage is
declared per turn; the fake derives every step and run usage from it, which is what lets tests
check the proxy's accounting against known totals.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from proxy.testing.streams import Json, split_text, usage

OutcomeStatus = Literal["completed", "failed", "incomplete", "cancelled", "expired"]


@dataclass(frozen=True)
class TextTurn:
    """A ``message_creation`` step: the text streams as several ``thread.message.delta`` events."""

    text: str
    prompt_tokens: int = 50
    completion_tokens: int | None = None
    """Defaults to the number of deltas, a fair stand-in for tokens."""
    chunks: int | None = None
    """Number of deltas; ``None`` splits into word-like pieces."""

    def usage(self) -> Json:
        completion = self.completion_tokens
        if completion is None:
            completion = max(1, len(split_text(self.text, self.chunks)))
        return usage(self.prompt_tokens, completion)


@dataclass(frozen=True)
class FunctionCall:
    """One function tool call. ``arguments`` may be a str to script malformed JSON arguments."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None


@dataclass(frozen=True)
class ToolRound:
    """A ``tool_calls`` step with function calls: the run pauses in ``requires_action``.

    Several calls in one round are parallel tool calls (``index`` 0, 1, ... in the deltas).
    """

    calls: tuple[FunctionCall, ...]
    prompt_tokens: int = 80
    completion_tokens: int = 18

    def usage(self) -> Json:
        return usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True)
class CodeInterpreterTurn:
    """A builtin ``code_interpreter`` tool step; the server runs it, no client action needed."""

    input: str = "import math\nprint(math.sqrt(1764))"
    logs: str = "42.0\n"
    prompt_tokens: int = 90
    completion_tokens: int = 24

    def usage(self) -> Json:
        return usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True)
class FileSearchResult:
    file_id: str = "file-9GqnGmZDqPvQUWhFHvCmZp"
    file_name: str = "handbook.pdf"
    score: float = 0.82
    text: str = "Employees accrue 25 days of paid leave per year."


@dataclass(frozen=True)
class FileSearchTurn:
    """A builtin ``file_search`` tool step (no client action)."""

    results: tuple[FileSearchResult, ...] = (FileSearchResult(),)
    prompt_tokens: int = 1200
    completion_tokens: int = 12

    def usage(self) -> Json:
        return usage(self.prompt_tokens, self.completion_tokens)


Turn = TextTurn | ToolRound | CodeInterpreterTurn | FileSearchTurn


@dataclass(frozen=True)
class Outcome:
    """How the run ends once its turns are exhausted.

    - ``completed``: ``thread.run.completed``.
    - ``failed``: ``thread.run.failed`` with ``last_error``; with ``partial_text``, a last message
      step streams that text and then fails (message ``incomplete``/``run_failed``, step ``failed``).
    - ``incomplete``: the last text message ends ``thread.message.incomplete`` (reason
      ``max_tokens``) and the run ends ``incomplete``; ``under_completed_event`` sends that
      incomplete run under the ``thread.run.completed`` event name, as seen in the wild.
    - ``cancelled``: someone else cancels after the turns (``cancelling`` then ``cancelled``).
      The cancel endpoint works on any script, independently of this.
    - ``expired``: if the last turn is a :class:`ToolRound`, the run pauses and then expires when
      next polled (its outputs were never submitted); otherwise ``thread.run.expired`` ends it.
    """

    status: OutcomeStatus = "completed"
    error_code: str = "server_error"
    error_message: str = "Sorry, something went wrong."
    incomplete_reason: str = "max_completion_tokens"
    under_completed_event: bool = False
    partial_text: str | None = None
    partial_prompt_tokens: int = 40
    partial_completion_tokens: int = 5

    @classmethod
    def failed(cls, message: str = "Sorry, something went wrong.", code: str = "server_error",
               partial_text: str | None = None) -> Outcome:
        return cls("failed", error_code=code, error_message=message, partial_text=partial_text)

    @classmethod
    def incomplete(cls, reason: str = "max_completion_tokens", *, under_completed_event: bool = False
                   ) -> Outcome:
        return cls("incomplete", incomplete_reason=reason, under_completed_event=under_completed_event)

    def partial_usage(self) -> Json | None:
        if self.status != "failed" or self.partial_text is None:
            return None
        return usage(self.partial_prompt_tokens, self.partial_completion_tokens)


@dataclass(frozen=True)
class Script:
    """Turns plus outcome. Immutable; build with the classmethods and extend with ``then``/``ending``."""

    turns: tuple[Turn, ...] = ()
    outcome: Outcome = Outcome()
    model: str | None = None
    """Overrides the run's ``model`` (otherwise the request's, else ``gpt-4o``)."""
    usage_on_requires_action: bool = True
    """The documented examples fill run usage on ``requires_action`` (cumulative so far,
    including the paused tool step's model call); ``False`` sends ``null`` as the schema text says."""

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def of(cls, *turns: Turn, outcome: Outcome | None = None) -> Script:
        return cls(turns=tuple(turns), outcome=outcome or Outcome())

    @classmethod
    def text(cls, text: str = "Hello! How can I assist you today?", prompt_tokens: int = 50,
             completion_tokens: int | None = None, *, chunks: int | None = None) -> Script:
        return cls.of(TextTurn(text, prompt_tokens, completion_tokens, chunks))

    @classmethod
    def tool_then_text(cls, tool_name: str = "get_current_weather", arguments: dict[str, Any] | None = None,
                       answer_text: str = "It is 18°C and sunny in San Francisco.", *,
                       tool_prompt_tokens: int = 80, tool_completion_tokens: int = 18,
                       prompt_tokens: int = 120, completion_tokens: int | None = None) -> Script:
        args = {"location": "San Francisco, CA", "unit": "celsius"} if arguments is None else arguments
        return cls.of(
            ToolRound((FunctionCall(tool_name, args),), tool_prompt_tokens, tool_completion_tokens),
            TextTurn(answer_text, prompt_tokens, completion_tokens),
        )

    @classmethod
    def parallel_tools_then_text(cls, calls: list[tuple[str, dict[str, Any]]],
                                 answer_text: str = "Here is what I found.") -> Script:
        return cls.of(ToolRound(tuple(FunctionCall(n, a) for n, a in calls)), TextTurn(answer_text))

    # -- composition ----------------------------------------------------------------------------
    def then(self, *turns: Turn) -> Script:
        return replace(self, turns=self.turns + tuple(turns))

    def ending(self, outcome: Outcome | OutcomeStatus) -> Script:
        return replace(self, outcome=Outcome(outcome) if isinstance(outcome, str) else outcome)

    def with_model(self, model: str) -> Script:
        return replace(self, model=model)

    # -- expectations for tests -------------------------------------------------------------------
    def step_usages(self) -> list[Json]:
        """Usage of every step this script produces if all tool rounds get outputs."""
        out = [t.usage() for t in self.turns]
        partial = self.outcome.partial_usage()
        return [*out, partial] if partial else out

    def total_usage(self) -> Json:
        """The final run usage the fake will report (sum of all step usages)."""
        steps = self.step_usages()
        return usage(sum(u["prompt_tokens"] for u in steps), sum(u["completion_tokens"] for u in steps))


ScriptFactory = Callable[[Json], Script]
"""Chooses the script for a run from the create-run request body when the queue is empty."""


def default_script(body: Json) -> Script:
    """The queue-empty default for tests: a plain text answer."""
    return Script.text()


_DEMO_ANSWERS = (
    "Deep learning is a way for computers to learn patterns from lots of examples, a bit like "
    "how you learn to recognise cats after seeing many cats.",
    "Sure! Here are three ideas: take a short walk, drink a glass of water, and stretch for a minute.",
    "The capital of Australia is Canberra, not Sydney as many people assume.",
    "A haiku about autumn:\nCrisp leaves drift and fall,\ngolden light on quiet paths,\n"
    "the year exhales slow.",
)


def _example_arguments(function: Json) -> dict[str, Any]:
    """Plausible arguments for a declared function from its JSON-schema ``parameters``."""
    props: dict[str, Any] = (function.get("parameters") or {}).get("properties") or {}
    args: dict[str, Any] = {}
    for name, spec in props.items():
        spec = spec if isinstance(spec, dict) else {}
        if spec.get("enum"):
            args[name] = spec["enum"][0]
        elif name in ("location", "city"):
            args[name] = "San Francisco, CA"
        elif spec.get("type") in ("integer", "number"):
            args[name] = 3
        elif spec.get("type") == "boolean":
            args[name] = True
        else:
            args[name] = "example"
    return args


class DemoScripts:
    """Script factory for a served fake (``runtap fake-upstream``, ``make demo``).

    Cycles through realistic text answers; when the request declares function tools it plays a
    tool-calling round first (weather-style arguments derived from the tool's schema).
    """

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self, body: Json) -> Script:
        n = next(self._counter)
        answer = _DEMO_ANSWERS[n % len(_DEMO_ANSWERS)]
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
        functions = [t["function"] for t in tools if isinstance(t.get("function"), dict)]
        if functions:
            fn = functions[0]
            return Script.tool_then_text(fn.get("name", "get_current_weather"), _example_arguments(fn),
                                         "It is currently 18°C and sunny in San Francisco.",
                                         prompt_tokens=140 + n % 7)
        return Script.text(answer, prompt_tokens=60 + 13 * (n % 5))
