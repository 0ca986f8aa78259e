"""The read commands as a user runs them: on the sample recording, through a live proxy, as processes.

Expected values come from the workload's plan (scripts, models, keys, list prices), never from
the database under test, so a wrong view or query fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from proxy.keys import fingerprint
from proxy.record.migrations import DEFAULT_PRICES
from proxy.testing.scripts import ToolRound
from tests.analytics.conftest import ADMIN_TOKEN
from tests.analytics.workload import KEYS, Visit, final_usage, plan

PLAN = plan()
KEY_IDS = {team: fingerprint(raw) for team, raw in KEYS.items()}


def status(visit: Visit) -> str:
    return "cancelled" if visit.cancel_at_tools else visit.script.outcome.status


def cost(visit: Visit) -> float | None:
    usage = final_usage(visit)
    prices = [m for m in DEFAULT_PRICES if visit.model == m or visit.model.startswith(m + "-")]
    if usage is None or not prices:
        return None
    price_in, price_out = DEFAULT_PRICES[max(prices, key=len)]
    return (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6


def expected_usage(group: str) -> list[dict[str, object]]:
    """What `runtap usage --by GROUP --format json` must print, computed from the plan."""
    key = {"day": lambda v: v.at.date().isoformat(), "key": lambda v: KEY_IDS[v.key],
           "model": lambda v: v.model, "assistant": lambda v: v.assistant}[group]
    rows: dict[str, dict[str, object]] = defaultdict(lambda: {"runs": 0, "prompt_tokens": None,
                                                              "completion_tokens": None, "total_tokens": None,
                                                              "cost_usd": None, "unpriced_runs": 0})
    for visit in PLAN:
        row = rows[key(visit)]
        row["runs"] += 1  # type: ignore[operator]
        usage, priced = final_usage(visit), cost(visit)
        for column, value in (usage or {}).items():
            row[column] = (row[column] or 0) + value  # type: ignore[operator]
        if priced is not None:
            row["cost_usd"] = (row["cost_usd"] or 0) + priced  # type: ignore[operator]
        elif usage:
            row["unpriced_runs"] += 1  # type: ignore[operator]
    name = {"day": "day", "key": "key_id", "model": "model", "assistant": "assistant_id"}[group]
    return [{name: k, **v} for k, v in rows.items()]


def by_name(records: list[dict[str, object]], name: str) -> dict[object, dict[str, object]]:
    return {r[name]: r for r in records}


async def test_runs_lists_every_run_newest_first_with_its_outcome_tokens_and_cost(cli, sample_db):
    ran = await cli("runs", "--db", str(sample_db), "--limit", "100", "--format", "json")
    assert (ran.code, ran.err) == (0, "")
    records = json.loads(ran.out)
    newest_first = sorted(PLAN, key=lambda v: v.at, reverse=True)
    assert [(r["assistant_id"], r["model"], r["status"], r["created_at"][:16]) for r in records] == [
        (v.assistant, v.model, status(v), v.at.isoformat()[:16]) for v in newest_first]
    for record, visit in zip(records, newest_first, strict=True):
        usage = final_usage(visit)
        assert record["total_tokens"] == (usage["total_tokens"] if usage else None)
        assert record["cost_usd"] == pytest.approx(cost(visit)) if cost(visit) else record["cost_usd"] is None
        assert record["key_id"] == KEY_IDS[visit.key]
        rounds = 1 if visit.cancel_at_tools else sum(isinstance(t, ToolRound) for t in visit.script.turns)
        assert record["tool_rounds"] == rounds
    reasons = {r["reason"] for r in records} - {None}
    assert reasons == {"max_completion_tokens", "server_error", "rate_limit_exceeded"}


async def test_runs_filters_by_status_key_and_time_and_limits(cli, sample_db):
    db = ["--db", str(sample_db), "--format", "json"]
    failed = json.loads((await cli("runs", *db, "--status", "failed,incomplete")).out)
    ended_badly = [status(v) for v in PLAN if status(v) in ("failed", "incomplete")]
    assert sorted(r["status"] for r in failed) == sorted(ended_badly)
    batch = json.loads((await cli("runs", *db, "--key", KEY_IDS["batch"])).out)
    assert [r["assistant_id"] for r in batch] == ["asst_digest"] * 3
    bare = json.loads((await cli("runs", *db, "--key", KEY_IDS["batch"].removeprefix("sha256:"))).out)
    assert bare == batch
    last_day = json.loads((await cli("runs", *db, "--since", "2026-11-18", "--limit", "100")).out)
    assert len(last_day) == sum(v.at.day == 18 for v in PLAN)
    assert len(json.loads((await cli("runs", *db, "--limit", "4")).out)) == 4


async def test_runs_table_is_aligned_and_csv_has_a_header(cli, sample_db):
    table = (await cli("runs", "--db", str(sample_db), "--limit", "2")).out.splitlines()
    assert re.fullmatch(r"run_id +created_at +status +assistant_id +model +tool_rounds +total_tokens +cost_usd"
                        r" +duration_ms +reason +key_id", table[0])
    assert table[-1] == "(2 rows)" and len(table) == 5
    assert table[2].startswith("run_") and "  2026-11-18 23:30:02  completed  asst_digest " in table[2]
    # Each column starts at the same place on every line; numbers are right-aligned.
    assert table[0].index("created_at") == table[2].index("2026") == table[3].index("2026")
    assert table[0].index("total_tokens") + len("total_tokens") == table[2].index(" 1220") + len(" 1220")
    csv = (await cli("runs", "--db", str(sample_db), "--limit", "1", "--format", "csv")).out.splitlines()
    assert csv[0] == ("run_id,created_at,status,assistant_id,model,tool_rounds,total_tokens,cost_usd,duration_ms,"
                      "reason,key_id")
    assert csv[1].endswith(",2026-11-18T23:30:02+00:00,completed,asst_digest,gpt-4.1-nano,0,1220,0.000158,3000.0,,"
                           + KEY_IDS["batch"]) and len(csv) == 2


@pytest.mark.parametrize("group", ["day", "key", "model", "assistant"])
async def test_usage_sums_tokens_and_cost_per_group(cli, sample_db, group):
    ran = await cli("usage", "--by", group, "--db", str(sample_db), "--format", "json")
    assert ran.code == 0
    got = json.loads(ran.out)
    name = next(iter(got[0]))
    expected = by_name(expected_usage(group), name)
    assert by_name(got, name).keys() == expected.keys()
    for key, row in by_name(got, name).items():
        assert row == {**expected[key], "cost_usd": pytest.approx(expected[key]["cost_usd"])}, key
    if group == "day":
        assert [r["day"] for r in got] == ["2026-11-18", "2026-11-17", "2026-11-16"]
    else:  # costliest first, unpriced last
        costs = [r["cost_usd"] for r in got]
        assert costs == sorted(costs, key=lambda c: -1 if c is None else c, reverse=True)


async def test_usage_table(cli, sample_db):
    out = (await cli("usage", "--by", "model", "--db", str(sample_db))).out
    assert out.splitlines()[0] == (
        "model          runs  prompt_tokens  completion_tokens  total_tokens  cost_usd  unpriced_runs")
    # 2 file_search + text turns of the plan's research script 7; no price for an Azure deployment name.
    assert out.splitlines()[-2] == ("contoso-gpt4o     1           4660                229          4889"
                                    "                        1")


def _visit_run_id(records: list[dict[str, object]], visit: Visit) -> str:
    [match] = [r for r in records if r["created_at"][:16] == visit.at.isoformat()[:16]]  # type: ignore[index]
    return str(match["run_id"])


async def test_run_prints_a_timeline_of_steps_tool_calls_and_messages(cli, sample_db):
    refund = next(v for v in PLAN if v.at.hour == 9 and v.at.minute == 5 and v.at.day == 16)
    records = json.loads((await cli("runs", "--db", str(sample_db), "--limit", "100", "--format", "json")).out)
    run_id = _visit_run_id(records, refund)
    ran = await cli("run", run_id, "--db", str(sample_db), "--format", "json")
    items = json.loads(ran.out)
    assert [(i["kind"], i["step"], i["name"], i["status"]) for i in items] == [
        ("run", 0, "asst_support", "completed"),
        ("step", 1, "tool_calls", "completed"),
        ("tool_call", 1, "lookup_order", "submitted"),
        ("tool_call", 1, "refund_order", "submitted"),
        ("step", 2, "message_creation", "completed"),
        ("message", 2, "assistant", "completed"),
    ]
    tool_turn, text_turn = refund.script.turns
    assert (items[1]["prompt_tokens"], items[1]["completion_tokens"]) == (tool_turn.prompt_tokens,
                                                                        tool_turn.completion_tokens)
    assert items[4]["total_tokens"] == text_turn.usage()["total_tokens"]
    assert items[0]["total_tokens"] == final_usage(refund)["total_tokens"]  # type: ignore[index]
    assert json.loads(items[3]["detail"]) == {"order_id": "A-1001", "amount": 21}
    assert json.loads(items[3]["output"]) == {"ok": True, "tool": "refund_order", "order_id": "A-1001", "amount": 21}
    assert all(i["client_ms"] >= 0 for i in items[2:4])
    assert items[5]["detail"] == "I have refunded your order."
    text = (await cli("run", run_id, "--db", str(sample_db))).out
    assert text.startswith(f"run {run_id}  completed\n"
                           "  assistant asst_support · model gpt-4o-mini · created 2026-11-16 09:05:02 UTC\n")
    assert re.search(r"\n  \+\d+ s  step 1  tool_calls  completed  \d+ s  341 tokens \(317 prompt \+ 24 completion\)"
                     r"  step_\w+\n      tool call lookup_order  submitted  client tool time \d+ ms  call_\w+\n"
                     r"        arguments \{\"order_id\":\"A-1001\"\}\n", text)
    assert "        text      I have refunded your order.\n" in text


async def test_run_shows_errors_and_unknown_runs_exit_1(cli, sample_db):
    records = json.loads((await cli("runs", "--db", str(sample_db), "--status", "failed", "--format", "json")).out)
    rate_limited = next(r for r in records if r["reason"] == "rate_limit_exceeded")
    text = (await cli("run", rate_limited["run_id"], "--db", str(sample_db))).out
    assert "  rate_limit_exceeded: Rate limit reached for gpt-4o.\n" in text and "no usage · no cost" in text
    missing = await cli("run", "run_nope", "--db", str(sample_db))
    assert (missing.code, missing.out) == (1, "")
    assert missing.err == "runtap run: no run run_nope in the recording (not_found)\n"


async def test_sql_prints_any_read_query(cli, sample_db):
    ran = await cli("sql", "select assistant_id, count(*) as runs from runs group by 1 order by 1", "--db",
                    str(sample_db))
    assert ran.out == (
        "assistant_id   runs\n"
        "-------------  ----\n"
        "asst_analyst      6\n"
        "asst_digest       3\n"
        "asst_research     8\n"
        "asst_support     10\n"
        "asst_weather      6\n"
        "(5 rows)\n")


@pytest.mark.parametrize("statement", [
    "insert into prices values ('x', 1, 1, 'me')",
    "drop view runs_summary",
    "copy runs to '/tmp/runs.csv'",
    "select * from read_csv('/etc/passwd')",
])
async def test_sql_refuses_what_is_not_a_read(cli, sample_db, statement):
    before = sample_db.stat().st_mtime_ns
    ran = await cli("sql", statement, "--db", str(sample_db))
    assert ran.code == 1 and ran.out == ""
    assert ran.err.startswith("runtap sql: ") and ran.err.endswith("(read_only)\n")
    assert sample_db.stat().st_mtime_ns == before


async def test_export_writes_every_table_as_parquet_that_reads_back_the_same(cli, sample_db, tmp_path):
    out = tmp_path / "export"
    ran = await cli("export", "--format", "parquet", str(out), "--db", str(sample_db))
    assert ran.code == 0, ran.err
    tables = ["requests", "events", "event_rows", "response_streams", "runs", "run_steps", "tool_calls", "messages",
              "prices", "budget_charges", "budget_limits", "responses", "response_items"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in tables)
    assert_round_trip(sample_db, out, tables)
    lines = ran.out.splitlines()
    assert lines[0].split() == ["table", "rows", "file"] and lines[-1] == f"({len(tables)} rows)"
    assert [line.split()[0] for line in lines[2:-1]] == sorted(tables)
    runs_line = lines[2 + sorted(tables).index("runs")]
    assert re.fullmatch(rf"runs +{len(PLAN)}  {re.escape(str(out / 'runs.parquet'))}", runs_line)


def assert_round_trip(db: Path, out: Path, tables: list[str]) -> None:
    con = duckdb.connect()
    try:
        con.execute(f"attach '{db}' as rec (read_only)")
        for table in tables:
            parquet = f"read_parquet('{out / (table + '.parquet')}')"
            assert con.execute(f"select count(*) from {parquet}").fetchone() == \
                con.execute(f"select count(*) from rec.{table}").fetchone(), table
            assert con.execute(f"select * from {parquet} except all select * from rec.{table}").fetchall() == []
            assert con.execute(f"select * from rec.{table} except all select * from {parquet}").fetchall() == []
            assert [d[1] for d in con.execute(f"select * from {parquet}").description] == \
                [d[1] for d in con.execute(f"select * from rec.{table}").description], table
    finally:
        con.close()


async def test_commands_print_the_same_through_a_live_proxy_as_from_the_file(cli, live, admin, proxy, monkeypatch):
    monkeypatch.setenv("RUNTAP_ADMIN_TOKEN", ADMIN_TOKEN)
    db = ["--db", str(live), "--admin", admin]
    first_run = json.loads((await cli("runs", *db, "--limit", "1", "--format", "json")).out)[0]["run_id"]
    commands = [["runs", "--limit", "100"], ["runs", "--format", "json", "--status", "failed"],
                ["usage", "--by", "model"], ["usage", "--format", "csv"], ["run", first_run],
                ["run", first_run, "--format", "json"], ["sql", "select * from tool_stats order by name"]]
    through_proxy = [await cli(*command, *db) for command in commands]
    await proxy.close()  # the writer closes: the file is free
    from_file = [await cli(*command, *db) for command in commands]
    assert [(r.code, r.err) for r in through_proxy] == [(0, "")] * len(commands)
    assert [r.out for r in through_proxy] == [r.out for r in from_file]
    assert len(json.loads(through_proxy[1].out)) == sum(status(v) == "failed" for v in PLAN)


async def test_export_through_a_live_proxy_gives_the_same_rows(cli, live, admin, proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("RUNTAP_ADMIN_TOKEN", ADMIN_TOKEN)
    ran = await cli("export", str(tmp_path / "live"), "--db", str(live), "--admin", admin)
    assert ran.code == 0, ran.err
    await proxy.close()
    tables = ["requests", "events", "event_rows", "response_streams", "runs", "run_steps", "tool_calls", "messages",
              "prices", "budget_charges", "budget_limits", "responses", "response_items"]
    assert_round_trip(live, tmp_path / "live", tables)


async def test_a_missing_recording_exits_3(cli, tmp_path):
    ran = await cli("runs", "--db", str(tmp_path / "none.duckdb"))
    assert ran.code == 3
    assert ran.err == f"runtap runs: no recording at {tmp_path / 'none.duckdb'} (runtap serve --db" \
                      f" {tmp_path / 'none.duckdb'} writes one)\n"


@pytest.mark.parametrize("argv", [["runs", "--limit", "0"], ["runs", "--since", "soon"], ["runs", "--status", "done"],
                                  ["usage", "--by", "week"], ["export", "--format", "csv", "x"]])
async def test_bad_arguments_exit_2(cli, argv):
    with pytest.raises(SystemExit) as exited:
        await cli(*argv)
    assert exited.value.code == 2


def test_runtap_and_python_m_analytics_run_the_read_commands(sample_db):
    runtap = Path(sys.executable).with_name("runtap")
    argv = ["usage", "--by", "key", "--format", "csv", "--db", str(sample_db)]
    outputs = [subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
               for command in ([str(runtap), *argv], [sys.executable, "-m", "analytics", *argv])]
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert lines[0] == "key_id,runs,prompt_tokens,completion_tokens,total_tokens,cost_usd,unpriced_runs"
    assert {line.split(",")[0] for line in lines[1:]} == set(KEY_IDS.values())
