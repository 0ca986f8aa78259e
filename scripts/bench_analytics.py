"""How fast the read commands are on a big recording (README, "Benchmark (analytics)").

Generates, with bulk SQL into the real schema (``migrate``), a recording shaped like runtap's own:
``--runs`` runs (default 1,000,000) over 90 days from 20 assistants, 6 models and 50 keys; each
run has 0-3 tool rounds (1-2 calls each), one exchange per stream (the create, then one per
``submit_tool_outputs``), ~20 SSE events with JSON data of realistic sizes (run objects ~1.3 KB,
deltas ~200 B), its steps, tool calls and two messages. Then it reports the size on disk, bytes
per event, and the time of ``runtap usage --by day``, ``runtap runs --limit 50`` and a
``tool_stats`` query: each as its own process (``runtap ...`` and ``python -m analytics ...``, so
Python, imports and opening the file count) and as the query alone, best of ``--repeat``. The
database lives in a temporary directory under /tmp and is deleted after (unless ``--keep``).
Generating 1,000,000 runs takes 5-7 minutes on 2 cores.

    .venv/bin/python scripts/bench_analytics.py [--runs N] [--keep] [--reuse DB]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from analytics import queries
from analytics.db import FileRecording
from proxy.record.migrations import migrate

CHUNK_RUNS = 100_000
START = "2026-08-01 00:00:00+00"
DAYS = 90
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "gpt-4o-2024-08-06"]
TOOLS = ["lookup_order", "refund_order", "get_current_weather", "search_kb", "create_ticket"]
FINAL_EVENTS = ["thread.run.created", "thread.run.queued", "thread.run.in_progress", "thread.run.step.created",
                "thread.message.created", "thread.message.in_progress", "thread.message.delta",
                "thread.message.delta", "thread.message.delta", "thread.message.delta", "thread.message.completed",
                "thread.run.step.completed", "thread.run.completed", "done"]
TOOL_EVENTS = ["thread.run.created", "thread.run.queued", "thread.run.in_progress", "thread.run.step.created",
               "thread.run.step.delta", "thread.run.step.delta", "thread.run.requires_action", "done"]
TOOL_STATS = "select * from tool_stats order by p95_client_ms desc"
COMMANDS: dict[str, tuple[list[str], Callable[[FileRecording], object]]] = {
    "usage --by day": (["usage", "--by", "day"], lambda rec: queries.usage(rec, by="day")),
    "runs --limit 50": (["runs", "--limit", "50"], lambda rec: queries.runs(rec, limit=50)),
    "sql 'select * from tool_stats ...'": (["sql", TOOL_STATS], lambda rec: rec.query(TOOL_STATS)),
    "sql 'select 1' (start-up only)": (["sql", "select 1"], lambda rec: rec.query("select 1")),
}

# One row per run, everything derived from a hash of its number so chunks are independent.
RUNS = f"""
create or replace temp table chunk as
select r, h, 'run_' || substr(md5('r' || r), 1, 24) as run_id, 'thread_' || substr(md5('t' || r), 1, 24) as thread_id,
       'asst_' || substr(md5('a' || (h % 20)), 1, 24) as assistant_id, {MODELS}[1 + (h >> 8) % 6] as model,
       'sha256:' || substr(md5('k' || ((h >> 16) % 50)), 1, 16) as key_id,
       timestamptz '{START}' + to_microseconds((r * {DAYS} * 86400000000 // $runs)::bigint) as created_at,
       case when h % 100 < 90 then 'completed' when h % 100 < 93 then 'failed'
            when h % 100 < 96 then 'incomplete' when h % 100 < 98 then 'cancelled' else 'expired' end as status,
       [0, 0, 0, 0, 1, 1, 1, 1, 2, 3][1 + (h >> 24) % 10] as rounds,
       1 + (h >> 28) % 2 as calls_per_round,
       200 + (h >> 32) % 4800 as prompt_tokens, 20 + (h >> 40) % 780 as completion_tokens
from (select range as r, (hash(range) >> 1)::bigint as h from range($lo, $hi))
"""
INSERT_RUNS = """
insert into runs select run_id, thread_id, assistant_id, model, status, key_id, created_at,
    created_at + interval 1 second, created_at + to_seconds(5 + rounds * 8 + h % 20), created_at + interval 10 minute,
    prompt_tokens, completion_tokens, prompt_tokens + completion_tokens,
    case status when 'failed' then 'server_error' end, case status when 'failed' then 'The server had an error.' end,
    case status when 'incomplete' then 'max_completion_tokens' end, rounds, null, null,
    case status when 'incomplete' then 256 end, 1 + rounds, created_at, created_at + to_seconds(6 + rounds * 8)
from chunk
"""
INSERT_REQUESTS = """
create or replace temp table chunk_requests as
select c.*, k.range as k, 'rt_' || md5('q' || c.r || '.' || k.range) as request_id,
       c.created_at + to_seconds(k.range * 8) as started_at, k.range = c.rounds as final
from chunk c, range(0, 4) k where k.range <= c.rounds;
insert into requests select request_id, started_at, 'POST',
    case when k = 0 then '/v1/threads/runs'
         else '/v1/threads/' || thread_id || '/runs/' || run_id || '/submit_tool_outputs' end,
    null, case when k = 0 then 'POST /v1/threads/runs'
               else 'POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs' end,
    200, key_id, 'req_' || md5('u' || request_id), true, 180 + h % 300, 2000 + h % 9000, 'completed', null,
    thread_id, run_id, null,
    '{"assistant_id":"' || assistant_id || '","stream":true,"thread":{"messages":[{"role":"user","content":"'
        || repeat(substr(md5(request_id), 1, 8) || ' ', 20) || '"}]}}',
    null, 400, 9000 + h % 4000, 'text/event-stream; charset=utf-8', case when final then 14 else 8 end
from chunk_requests
"""
RUN_OBJECT = """'{"id":"' || run_id || '","object":"thread.run","created_at":' || epoch(created_at)::bigint
    || ',"assistant_id":"' || assistant_id || '","thread_id":"' || thread_id || '","status":"in_progress",'
    || '"model":"' || model || '","instructions":"You are a helpful assistant for ' || assistant_id
    || '. ' || repeat('Answer briefly, cite the handbook, never invent order numbers. ', 12)
    || '","tools":[{"type":"function","function":{"name":"lookup_order"}}],"usage":null,"temperature":1.0}'"""
INSERT_EVENTS = f"""
insert into event_rows select request_id, e.range as seq, name,
    case when name = 'done' then '[DONE]'
         when name like 'thread.run.step%' then '{{"id":"step_' || substr(md5(request_id), 1, 24)
              || '","object":"thread.run.step","run_id":"' || run_id
              || '","type":"tool_calls","status":"in_progress","step_details":{{"tool_calls":[{{"id":"call_'
              || substr(md5(request_id || e.range), 1, 24)
              || '","function":{{"name":"lookup_order","arguments":"{{}}"}}}}]}}}}'
         when name = 'thread.message.delta' then '{{"id":"msg_' || substr(md5(request_id), 1, 24)
              || '","object":"thread.message.delta","delta":{{"content":[{{"index":0,"type":"text","text":{{"value":"'
              || substr(md5(request_id || e.range), 1, 12) || ' words of the answer "}}}}]}}}}'
         when name like 'thread.message%' then '{{"id":"msg_' || substr(md5(request_id), 1, 24)
              || '","object":"thread.message","role":"assistant","status":"in_progress","content":[],"run_id":"'
              || run_id || '"}}'
         else {RUN_OBJECT} end,
    started_at + to_milliseconds(e.range * 40), run_id, null
from (select *, case when final then {FINAL_EVENTS} else {TOOL_EVENTS} end as names from chunk_requests) q,
     range(0, 14) e, lateral (select names[1 + e.range] as name)
where e.range < len(names)
"""
INSERT_STEPS_CALLS_MESSAGES = """
insert into run_steps select 'step_' || substr(md5(request_id), 1, 24), run_id, thread_id,
    case when final then 'message_creation' else 'tool_calls' end, 'completed',
    started_at + interval 1 second, started_at + to_seconds(2 + h % 5),
    prompt_tokens // (rounds + 1), completion_tokens // (rounds + 1),
    (prompt_tokens + completion_tokens) // (rounds + 1),
    null, null, case when final then 'msg_' || substr(md5(request_id), 1, 24) end, started_at, started_at
from chunk_requests;
insert into tool_calls select 'call_' || substr(md5(request_id || c.range), 1, 24),
    'step_' || substr(md5(request_id), 1, 24),
    run_id, 'function', {tools}[1 + (h + c.range) % 5], '{{"order_id":"A-' || (h % 100000) || '"}}',
    case when (h >> 3) % 20 = 0 then '{{"error":"not found"}}' when status = 'expired' and k = rounds - 1 then null
         else '{{"status":"shipped","carrier":"UPS","eta":"2 days"}}' end,
    started_at + interval 3 second,
    case when status = 'expired' and k = rounds - 1 then null
         else started_at + to_milliseconds(3000 + ((hash(request_id || c.range) >> 1)::bigint % 4000)) end,
    c.range
from chunk_requests, range(0, 2) c where not final and c.range < calls_per_round;
insert into messages select 'msg_u' || substr(md5(run_id), 1, 23), thread_id, null, null, 'user', 'completed',
    'Where is my order A-' || (h % 100000) || '? ' || repeat('Please check. ', 3), created_at, created_at, null
from chunk;
insert into messages select 'msg_' || substr(md5(request_id), 1, 24), thread_id, run_id, assistant_id, 'assistant',
    'completed', 'Your order ' || (h % 100000) || ' shipped yesterday. ' || repeat('It should arrive soon. ', 6),
    started_at + interval 2 second, started_at + interval 4 second, null
from chunk_requests where final
"""


def generate(db: Path, runs: int) -> None:
    con = duckdb.connect(str(db))
    try:
        migrate(con)
        for lo in range(0, runs, CHUNK_RUNS):
            hi = min(runs, lo + CHUNK_RUNS)
            con.execute("begin transaction")
            con.execute(RUNS, {"lo": lo, "hi": hi, "runs": runs})
            for sql in (INSERT_RUNS, INSERT_REQUESTS, INSERT_EVENTS,
                        INSERT_STEPS_CALLS_MESSAGES.format(tools=TOOLS)):
                for statement in filter(str.strip, sql.split(";\n")):
                    con.execute(statement)
            con.execute("commit")
            print(f"  {hi:,} runs", file=sys.stderr, flush=True)
        con.execute("checkpoint")
    finally:
        con.close()


def counts(db: Path) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = ["runs", "requests", "events", "run_steps", "tool_calls", "messages"]
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}  # type: ignore[index]
    finally:
        con.close()


def time_process(argv: list[str], repeat: int) -> float:
    """Best wall time of a whole process: Python, imports, opening the file, the query, printing."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


def time_query(db: Path, ask: Callable[[FileRecording], object], repeat: int) -> float:
    """Best time of the question alone, on an open file (what start-up adds is the difference)."""
    rec = FileRecording(str(db))
    try:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            ask(rec)
            best = min(best, time.perf_counter() - started)
        return best
    finally:
        rec.close()


def report(db: Path, repeat: int) -> None:
    runtap = str(Path(sys.executable).with_name("runtap"))
    print(f"\n| command (best of {repeat}) | `runtap ...` process | `python -m analytics ...` process | query alone |")
    print("|---|---|---|---|")
    for label, (argv, ask) in COMMANDS.items():
        argv = [*argv, "--db", str(db)]
        print(f"| `{label}` | {time_process([runtap, *argv], repeat):.2f} s"
              f" | {time_process([sys.executable, '-m', 'analytics', *argv], repeat):.2f} s"
              f" | {time_query(db, ask, repeat):.3f} s |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (its path is printed)")
    parser.add_argument("--reuse", type=Path, help="time the commands on this database instead of generating one")
    args = parser.parse_args()
    workdir = args.reuse.parent if args.reuse else Path(tempfile.mkdtemp(prefix="runtap-bench-analytics-", dir="/tmp"))
    db = args.reuse or workdir / "bench.duckdb"
    try:
        started = time.perf_counter()
        if not args.reuse:
            generate(db, args.runs)
        generated_s = time.perf_counter() - started
        rows = counts(db)
        size = sum(p.stat().st_size for p in workdir.iterdir() if p.name.startswith(db.name))
        print(f"recording: {rows['runs']:,} runs, {rows['events']:,} events, {rows['requests']:,} requests, "
              f"{rows['run_steps']:,} steps, {rows['tool_calls']:,} tool calls, {rows['messages']:,} messages "
              f"(generated in {generated_s:.0f} s)")
        print(f"size on disk: {size / 2**30:.2f} GiB, {size / rows['events']:.0f} bytes per event (all tables)")
        report(db, args.repeat)
    finally:
        if args.keep or args.reuse:
            print(f"kept {db}", file=sys.stderr)
        else:
            shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
