"""The sample recording: three days of an ordinary team's Assistants traffic, through the proxy.

The analytics tests and the questions of docs/queries.md need more than the demo's two runs: four
assistants on four models under three API keys, tool calls that succeed, fail and are abandoned,
runs that fail, go incomplete or are cancelled, streamed and polled. Every run goes through the
real proxy with the real openai SDK to the fake upstream, whose ids are seeded and whose clock is
scripted (:class:`Clock`), so run, step and message timestamps, ids, tokens and costs come out
the same every time. Only runtap's own clock (requested_at/submitted_at, first_seen_at, request
timings) is real.

Make the recording docs/queries.md shows with::

    .venv/bin/python -m tests.analytics.workload /tmp/sample.duckdb

(its client sleeps in each tool so runtap's client tool times look real: about 30 s; the tests
do not sleep).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from openai import AsyncOpenAI
from openai.types.beta.threads import Run

from proxy.app import make_app
from proxy.config import Settings
from proxy.relay.runner import RelayRunner
from proxy.testing.fake_upstream import FakeUpstream
from proxy.testing.scripts import (
    CodeInterpreterTurn,
    FileSearchTurn,
    FunctionCall,
    Outcome,
    Script,
    TextTurn,
    ToolRound,
)

START = datetime(2026, 11, 16, tzinfo=UTC)
"""Midnight UTC of the first day (a Monday)."""
SEED = 7
KEYS = {"support": "sk-support-" + "s1" * 20, "research": "sk-research-" + "r2" * 20, "batch": "sk-batch-" + "b3" * 20}
"""Raw API keys per team; the recording only ever holds their key_id."""
FUNCTION = {"type": "function"}
TOOLS = {
    "asst_support": [{**FUNCTION, "function": {"name": "lookup_order", "parameters": {"type": "object"}}},
                     {**FUNCTION, "function": {"name": "refund_order", "parameters": {"type": "object"}}}],
    "asst_weather": [{**FUNCTION, "function": {"name": "get_current_weather", "parameters": {"type": "object"}}}],
    "asst_research": [{"type": "file_search"}],
    "asst_analyst": [{"type": "code_interpreter"}],
    "asst_digest": [],
}
TICK_S = {"gpt-4o-mini": 1, "gpt-4.1-mini": 1, "gpt-4o": 2, "contoso-gpt4o": 2, "o3-mini": 4, "gpt-4.1-nano": 1}
"""Seconds the fake's clock advances per reading, per model: slower models take longer."""


class Clock:
    """The fake upstream's clock (Unix seconds): set at each run's start, advancing per reading."""

    def __init__(self) -> None:
        self.t, self.tick_s = int(START.timestamp()), 1

    def __call__(self) -> int:
        now = self.t
        self.t += self.tick_s
        return now

    def start(self, at: datetime, tick_s: int) -> None:
        self.t, self.tick_s = int(at.timestamp()), tick_s


@dataclass(frozen=True)
class Visit:
    """One user question: which key, assistant and model, what the run does, how the client drives it."""

    at: datetime
    key: str
    assistant: str
    model: str
    script: Script
    question: str
    poll: bool = False
    cancel_at_tools: bool = False
    max_completion_tokens: int | None = None
    tool_results: Mapping[str, Any] = field(default_factory=dict)


TOOL_S = {"lookup_order": 1, "refund_order": 3, "get_current_weather": 2}
"""How long each client tool takes, in whole seconds of the fake's clock. For the docs/queries.md recording
the client also sleeps 55-95% of it for real, so runtap's client tool times look like real ones."""


def _order(i: int, refund: bool = False) -> Script:
    calls = [FunctionCall("lookup_order", {"order_id": f"A-{1000 + i}"})]
    if refund:
        calls.append(FunctionCall("refund_order", {"order_id": f"A-{1000 + i}", "amount": 20 + i}))
    answer = "I have refunded your order." if refund else f"Order A-{1000 + i} shipped yesterday with UPS."
    return Script.of(ToolRound(tuple(calls), prompt_tokens=310 + 7 * i, completion_tokens=22 + len(calls)),
                     TextTurn(answer, prompt_tokens=380 + 7 * i, completion_tokens=30 + i))


def _research(i: int) -> Script:
    return Script.of(FileSearchTurn(prompt_tokens=1800 + 40 * i, completion_tokens=14),
                     TextTurn("Employees accrue 25 days of paid leave per year.", prompt_tokens=2300 + 40 * i,
                              completion_tokens=180 + 5 * i))


def _analysis(i: int) -> Script:
    return Script.of(CodeInterpreterTurn(prompt_tokens=900 + 25 * i, completion_tokens=60),
                     TextTurn("The square root of 1764 is 42.", prompt_tokens=1100 + 25 * i, completion_tokens=45))


def _weather(city: str, i: int) -> Script:
    return Script.tool_then_text("get_current_weather", {"location": city, "unit": "celsius"},
                                 f"It is 18°C in {city}.", tool_prompt_tokens=150 + i, prompt_tokens=190 + i,
                                 completion_tokens=12)


def _day(d: int) -> list[Visit]:
    """One day's traffic; `d` (0, 1, 2) varies the ids, cities, sizes and mishaps."""
    day = START + timedelta(days=d)

    def at(hhmm: str) -> datetime:
        return day + timedelta(hours=int(hhmm[:2]), minutes=int(hhmm[3:]))

    lost = {"lookup_order": {"error": "order not found"}}
    closed = {"refund_order": {"error": "refund window closed (30 days)"}}
    visits = [
        Visit(at("08:02"), "support", "asst_support", "gpt-4o-mini", _order(3 * d), "Where is my order?"),
        Visit(at("08:15"), "support", "asst_weather", "gpt-4.1-mini", _weather(["Paris", "Oslo", "Lima"][d], d),
              "Weather today?"),
        Visit(at("08:40"), "research", "asst_research", "gpt-4o", _research(d), "How much leave do I get?",
              poll=True),
        Visit(at("09:05"), "support", "asst_support", "gpt-4o-mini", _order(3 * d + 1, refund=True),
              "Please refund my order.", tool_results=closed if d == 1 else {}),
        Visit(at("09:30"), "research", "asst_analyst", "o3-mini", _analysis(d), "What is sqrt(1764)?"),
        Visit(at("10:10"), "support", "asst_support", "gpt-4o-mini", _order(3 * d + 2), "Where is my parcel?",
              poll=True, tool_results=lost if d != 1 else {}),
        Visit(at("11:00"), "research", "asst_research", "gpt-4o",
              _research(d + 3).ending(Outcome.incomplete("max_completion_tokens")), "Summarise the handbook.",
              max_completion_tokens=120),
        Visit(at("13:20"), "support", "asst_weather", "gpt-4.1-mini", _weather(["Tokyo", "Rome", "Cairo"][d], 3 + d),
              "Will it rain?", poll=True),
        Visit(at("16:00"), "research", "asst_analyst", "o3-mini",
              _analysis(d + 3).ending(Outcome.failed("The server had an error while processing your request.",
                                                     partial_text="Let me compute")) if d != 0 else _analysis(9),
              "Plot the weekly numbers."),
        Visit(at("23:30"), "batch", "asst_digest", "gpt-4.1-nano",
              Script.text("Daily digest: 12 tickets closed.", prompt_tokens=900 + 100 * d, completion_tokens=120),
              "Write the daily digest.", poll=True),
    ]
    if d == 1:
        visits += [
            Visit(at("12:00"), "support", "asst_support", "gpt-4o-mini", _order(40), "Cancel that question.",
                  poll=True, cancel_at_tools=True),
            Visit(at("15:00"), "research", "asst_research", "gpt-4o",
                  Script.of(outcome=Outcome.failed("Rate limit reached for gpt-4o.", code="rate_limit_exceeded")),
                  "Compare the two handbooks."),
        ]
    if d == 2:
        visits.append(Visit(at("14:00"), "research", "asst_research", "contoso-gpt4o", _research(7),
                            "What is the parental leave policy?"))
    return sorted(visits, key=lambda v: v.at)


def plan() -> list[Visit]:
    return [visit for d in range(3) for visit in _day(d)]


def final_usage(visit: Visit) -> dict[str, int] | None:
    """The run's final usage as the fake reports it: every turn's; only the first turn's when the
    client cancels at its tool call; none when the run fails before its first turn."""
    if not visit.script.turns:
        return None
    if visit.cancel_at_tools:
        return dict(visit.script.turns[0].usage())
    return dict(visit.script.total_usage())


async def _tool_outputs(run: Run, visit: Visit, clock: Clock, sleep: random.Random | None) -> list[dict[str, str]]:
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    seconds = max(TOOL_S[call.function.name] for call in calls)  # parallel calls: the slowest one counts
    if sleep is not None:
        await asyncio.sleep(seconds * (0.55 + 0.4 * sleep.random()))
    clock.t += seconds
    outputs = []
    for call in calls:
        name, args = call.function.name, json.loads(call.function.arguments)
        result = visit.tool_results.get(name) or {"ok": True, "tool": name, **args}
        outputs.append({"tool_call_id": call.id, "output": json.dumps(result)})
    return outputs


async def _streamed(manager: Any) -> Run:
    async with manager as stream:
        await stream.until_done()
        run: Run = stream.current_run
        return run


async def visit_once(client: AsyncOpenAI, fake: FakeUpstream, clock: Clock, visit: Visit,
                     sleep: random.Random | None = None) -> Run:
    """Play one visit to its end, as the application would."""
    clock.start(visit.at, TICK_S[visit.model])
    fake.enqueue(visit.script)
    create: dict[str, Any] = {"assistant_id": visit.assistant, "model": visit.model, "tools": TOOLS[visit.assistant],
                              "thread": {"messages": [{"role": "user", "content": visit.question}]}}
    if visit.max_completion_tokens:
        create["max_completion_tokens"] = visit.max_completion_tokens
    runs = client.beta.threads.runs
    if not visit.poll:
        run = await _streamed(client.beta.threads.create_and_run_stream(**create))
        while run.status == "requires_action":
            outputs = await _tool_outputs(run, visit, clock, sleep)
            run = await _streamed(runs.submit_tool_outputs_stream(thread_id=run.thread_id, run_id=run.id,
                                                                  tool_outputs=outputs))
        return run
    run = await client.beta.threads.create_and_run_poll(**create, poll_interval_ms=1)
    while run.status == "requires_action":
        if visit.cancel_at_tools:
            await runs.cancel(thread_id=run.thread_id, run_id=run.id)
            return await runs.retrieve(thread_id=run.thread_id, run_id=run.id)
        outputs = await _tool_outputs(run, visit, clock, sleep)
        run = await runs.submit_tool_outputs_and_poll(thread_id=run.thread_id, run_id=run.id, tool_outputs=outputs,
                                                      poll_interval_ms=1)
    return run


async def play(base_url: str, fake: FakeUpstream, clock: Clock, *, sleep: bool = False) -> list[Run]:
    """Every visit of :func:`plan`, in order, through the proxy at ``base_url`` (.../v1)."""
    clients = {team: AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) for team, key in KEYS.items()}
    rng = random.Random(SEED) if sleep else None
    try:
        return [await visit_once(clients[v.key], fake, clock, v, rng) for v in plan()]
    finally:
        for client in clients.values():
            await client.close()


def fake_upstream() -> tuple[FakeUpstream, Clock]:
    clock = Clock()
    return FakeUpstream(seed=SEED, clock=clock), clock


async def record(db: str | Path, *, sleep: bool = False) -> list[Run]:
    """Serve the fake and the proxy on free ports, play the plan, and close (which flushes) the recording."""
    fake, clock = fake_upstream()
    runners = [web.AppRunner(fake.app, access_log=None)]
    await runners[0].setup()
    upstream = web.TCPSite(runners[0], "127.0.0.1", 0)
    await upstream.start()
    settings = Settings.model_validate({"server": {"upstream": f"http://127.0.0.1:{_port(runners[0])}"},
                                        "recorder": {"db": str(db), "batch_interval_ms": 5}})
    runners.append(RelayRunner(make_app(settings), access_log=None))
    try:
        await runners[1].setup()
        await web.TCPSite(runners[1], "127.0.0.1", 0).start()
        return await play(f"http://127.0.0.1:{_port(runners[1])}/v1", fake, clock, sleep=sleep)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


if __name__ == "__main__":
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="The Assistants API is deprecated", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING)
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "sample.duckdb")
    for stale in (target, Path(f"{target}.wal")):
        stale.unlink(missing_ok=True)
    played = asyncio.run(record(target, sleep=True))
    print(f"{len(played)} runs recorded to {target}")
