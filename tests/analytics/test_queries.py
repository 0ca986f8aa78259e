"""The questions: the views behind them, on recordings made through the proxy, and the ten of docs/queries.md.

Exact values come from the workload's scripts and the fake upstream's scripted clock; runtap's
own clock (client tool times) is checked by relation only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics import queries
from analytics.db import FileRecording
from analytics.render import render
from proxy.config import Settings
from proxy.record.migrations import DEFAULT_PRICES, PRICES_SOURCE, fresh_database
from proxy.testing.scripts import Script, ToolRound
from tests.analytics.workload import final_usage, plan

QUESTIONS = Path(__file__).parents[2] / "docs" / "queries.md"
VARIES = "<!-- output varies"


@pytest.fixture
def sample(sample_db):
    rec = FileRecording(str(sample_db))
    yield rec
    rec.close()


def test_runs_summary_has_one_row_per_run_with_durations_from_the_upstreams_clock(sample):
    rows = sample.query("select assistant_id, status, duration_ms, queued_ms, tool_rounds, total_tokens"
                        " from runs_summary where created_at < '2026-11-16 09:00:00+00' order by created_at").rows
    # 08:02 streamed order lookup (gpt-4o-mini, 1 s per reading, 1 s tool), 08:15 streamed weather
    # (gpt-4.1-mini, 2 s tool), 08:40 polled research (gpt-4o, 2 s per reading; builtin steps unseen).
    tokens = [final_usage(v)["total_tokens"] for v in plan()[:3]]  # type: ignore[index]
    assert rows == [["asst_support", "completed", 6000.0, 1000.0, 1, tokens[0]],
                    ["asst_weather", "completed", 7000.0, 1000.0, 1, tokens[1]],
                    ["asst_research", "completed", 8000.0, 2000.0, 0, tokens[2]]]
    assert sample.query("select count(*), count(distinct run_id) from runs_summary").rows == [[33, 33]]


def test_tool_round_latency_counts_parallel_calls_once(sample):
    refund_run = "(select run_id from runs where created_at = '2026-11-16 09:05:02+00')"
    [[rnd, calls, tools, client_ms, submitted]] = sample.query(
        "select round, calls, tools, client_ms, submitted_at is not null from tool_round_latency"
        f" where run_id = {refund_run}").rows
    assert (rnd, calls, tools, submitted) == (1, 2, "lookup_order, refund_order", True)
    [[slowest, summed]] = sample.query(
        "select max(epoch_us(submitted_at) - epoch_us(requested_at)) / 1000.0,"
        " sum(epoch_us(submitted_at) - epoch_us(requested_at)) / 1000.0"
        f" from tool_calls where run_id = {refund_run}").rows
    assert client_ms == slowest and summed == 2 * slowest  # one submit carries both outputs
    rounds = sum(isinstance(turn, ToolRound) for visit in plan() for turn in visit.script.turns)
    # Every function round of the plan; the cancelled run's never got its outputs.
    assert sample.query("select count(*), count(submitted_at) from tool_round_latency").rows == [[rounds, rounds - 1]]


def test_step_latency_orders_steps_and_measures_the_wait_before_each(sample):
    rows = sample.query("select step_index, type, status, duration_ms, wait_ms, total_tokens from step_latency"
                        " where run_id = (select run_id from runs where created_at = '2026-11-16 08:15:02+00')"
                        " order by step_index").rows
    weather = next(v for v in plan() if v.assistant == "asst_weather")
    tool, text = (t.usage()["total_tokens"] for t in weather.script.turns)
    assert rows == [[1, "tool_calls", "completed", 3000.0, 1000.0, tool],
                    [2, "message_creation", "completed", 0.0, 1000.0, text]]


def test_tool_stats_counts_calls_failures_and_time_per_tool(sample):
    rows = sample.query("select name, type, calls, failures from tool_stats order by name").rows
    # lookup_order: 2 lost orders (days 1, 3) + the call of the cancelled run; refund_order: day 2's closed window.
    assert rows == [["code_interpreter", "code_interpreter", 6, 0], ["file_search", "file_search", 4, 0],
                    ["get_current_weather", "function", 6, 0], ["lookup_order", "function", 10, 3],
                    ["refund_order", "function", 3, 1]]
    [[p50, p95, most, rate]] = sample.query("select p50_client_ms, p95_client_ms, max_client_ms, failure_rate"
                                           " from tool_stats where name = 'lookup_order'").rows
    assert 0 < p50 <= p95 <= most and rate == 0.3
    assert sample.query("select p50_client_ms from tool_stats where type <> 'function'").rows == [[None], [None]]


def test_usage_by_key_day_matches_the_usage_command(sample):
    view = sample.query("select day, sum(runs)::bigint, sum(total_tokens)::bigint, round(sum(cost_usd), 9)"
                        " from usage_by_key_day group by day order by day desc").rows
    command = queries.usage(sample, by="day")
    assert view == [[r[0], r[1], r[4], round(r[5], 9)] for r in command.rows]
    assert [r[0] for r in view] == ["2026-11-18", "2026-11-17", "2026-11-16"]


def test_prices_ship_dated_list_prices_and_price_snapshots_by_prefix():
    con = fresh_database()
    try:
        assert con.execute("select count(*), min(source), max(source) from prices").fetchall() == [
            (len(DEFAULT_PRICES), PRICES_SOURCE, PRICES_SOURCE)]
        assert re.fullmatch(r"list prices as of \d{4}-\d{2}-\d{2} \(.*\)", PRICES_SOURCE)
        con.execute("insert into runs (run_id, model, prompt_tokens, completion_tokens, total_tokens) values"
                    " ('a', 'gpt-4o-2024-08-06', 1000000, 0, 1000000), ('b', 'gpt-4o-mini-2024-07-18', 0, 1000000,"
                    " 1000000), ('c', 'gpt-4o', 0, 0, 0), ('d', 'gpt-4omni', 1, 1, 2)")
        assert con.execute("select run_id, priced_as, cost_usd from runs_summary order by run_id").fetchall() == [
            ("a", "gpt-4o", 2.5), ("b", "gpt-4o-mini", 0.6), ("c", "gpt-4o", 0.0), ("d", None, None)]
    finally:
        con.close()


@pytest.fixture
def settings(tmp_path, upstream) -> Settings:
    return Settings.model_validate({
        "server": {"upstream": str(upstream.make_url("")).rstrip("/")},
        "recorder": {"db": str(tmp_path / "runtap.duckdb"), "batch_interval_ms": 5},
        "prices": {"models": {"contoso-gpt4o": {"input_usd_per_1m": 3, "output_usd_per_1m": 12},
                              "gpt-4o": {"input_usd_per_1m": 1, "output_usd_per_1m": 2}}},
    })


async def test_the_configs_prices_replace_and_add_models_at_start(fake, client, parts, recorded):
    fake.enqueue(Script.text("Hi", prompt_tokens=1_000_000, completion_tokens=1_000_000).with_model("contoso-gpt4o"))
    async with client.beta.threads.create_and_run_stream(assistant_id="asst_a") as stream:
        await stream.until_done()
    q = await recorded()
    assert q("select model, input_usd_per_1m, output_usd_per_1m, source from prices"
             " where source = 'config' order by model") == [("contoso-gpt4o", 3.0, 12.0, "config"),
                                                            ("gpt-4o", 1.0, 2.0, "config")]
    assert q("select count(*) from prices") == [(len(DEFAULT_PRICES) + 1,)]
    assert q("select model, cost_usd from runs_summary") == [("contoso-gpt4o", 15.0)]


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", datetime(2026, 11, 18, 11, 30, tzinfo=UTC)),
    ("24h", datetime(2026, 11, 17, 12, 0, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 11, 12, 0, tzinfo=UTC)),
    ("2w", datetime(2026, 11, 4, 12, 0, tzinfo=UTC)),
    ("today", datetime(2026, 11, 18, tzinfo=UTC)),
    ("yesterday", datetime(2026, 11, 17, tzinfo=UTC)),
    ("2026-11-16", datetime(2026, 11, 16, tzinfo=UTC)),
    ("2026-11-16T08:30", datetime(2026, 11, 16, 8, 30, tzinfo=UTC)),
    ("2026-11-16T08:30:00+02:00", datetime(2026, 11, 16, 6, 30, tzinfo=UTC)),
])
def test_since_reads_relative_and_absolute_times(text, expected):
    now = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
    assert queries.parse_since(text, now) == expected


def test_since_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="cannot read 'soon' as a time"):
        queries.parse_since("soon")
    assert datetime.now(UTC) - queries.parse_since("1h") - timedelta(hours=1) < timedelta(seconds=5)


def readme_questions() -> list[tuple[str, str, str, bool]]:
    """(title, sql, printed output, varies) of every question of docs/queries.md."""
    section = QUESTIONS.read_text()
    pattern = re.compile(r"\*\*(\d+\. [^*]+)\*\*.*?```sql\n(.*?)```\n\n"
                         r"(<!-- output varies[^\n]*\n\n)?```text\n(.*?)```", re.S)
    return [(m[1], m[2].strip(), m[4], bool(m[3])) for m in pattern.finditer(section)]


def test_the_readme_asks_ten_questions():
    titles = [title for title, *_ in readme_questions()]
    assert len(titles) == 10 and titles[0] == "1. Which assistant costs most per run?"


@pytest.mark.parametrize("question", readme_questions(), ids=lambda q: q[0][:40])
def test_every_readme_question_prints_what_the_readme_shows(sample, question):
    title, sql, shown, varies = question
    printed = render(sample.query(sql))
    if not varies:
        assert printed == shown, title
        return
    # Numbers from runtap's clock differ between recordings; the rest must not.
    assert printed.splitlines()[:2] == shown.splitlines()[:2] and len(printed.splitlines()) == len(shown.splitlines())
    assert sorted(line.split()[0] for line in printed.splitlines()[2:]) == \
        sorted(line.split()[0] for line in shown.splitlines()[2:])


def test_budget_figures_have_one_shape_whichever_source_gave_them():
    live = {"key_alias": "team-a", "key_id": "sha256:0123456789abcdef", "budget": "tokens_per_day", "unit": "tokens",
            "window_s": 86400, "limit": 1000, "used": 120, "reserved": 512, "remaining": 368,
            "resets_at": "2026-11-26T01:00:00.5+00:00"}
    cold = {**live, "limit": 1000.0, "used": 120.0, "reserved": 512.0, "resets_at": "2026-11-26T02:00:00.5+01:00"}
    usd = {**live, "budget": "usd_per_30d", "unit": "usd", "limit": 1.5, "used": 0.1 + 0.2, "reserved": 0.0,
           "resets_at": None}
    result = queries.budget_result([live, cold, usd])
    assert result.columns == list(queries.BUDGET_COLUMNS)
    assert result.rows[0] == result.rows[1] == [
        "team-a", "sha256:0123456789abcdef", "tokens_per_day", "tokens", 86400, 1000, 120, 512, 368,
        "2026-11-26T01:00:00.500000+00:00"]
    assert result.rows[2][5:] == [1.5, 0.3, 0.0, 1.2, None]


def test_budgets_on_a_recording_without_budgets_is_empty(sample):
    assert queries.budgets(sample).rows == []
