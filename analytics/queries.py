"""The read commands' questions: one named SQL constant and one function each.

Every query reads the public views of migration m002 (``runs_summary``, ``step_latency``) or
tables, never the writer's internals, and binds the user's values as parameters: the SQL text is
always one of the constants here, so it runs the same on the file and through ``/admin/sql``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from proxy.record.migrations import APPEND_TABLES

from .db import FileRecording, QueryError, Recording, Result

RUNS = """
select run_id, created_at, status, assistant_id, model, tool_rounds, total_tokens, cost_usd, duration_ms,
       coalesce(last_error_code, incomplete_reason) as reason, key_id
from runs_summary
where {where}
order by created_at desc, run_id desc
limit ?
"""

# One row per line of the timeline, in order: the run, then each step (by step_index) followed by
# its tool calls and its message. `$1` is the run id. A polled run's steps are recorded only if the
# client listed them: its tool calls (from required_action) then have no step and follow the run
# row. Tool calls carry runtap's clock (requested_at/submitted_at), not the upstream's: no offset.
# A Responses turn has no steps: its responses stand in their place (in the order runtap saw them,
# timed by runtap's clock from the first one), each followed by the tool calls it asked for and its
# output items (a message's text, reasoning, built-in tool calls; function calls are the tool calls).
TIMELINE = """
with run as (select * from runs_summary where run_id = $1),
steps as (
    select l.*, s.message_id from step_latency l join run_steps s using (step_id) where l.run_id = $1
),
turn as (
    select r.*, coalesce(q.started_at, r.first_seen_at) as asked_at,
           row_number() over (order by r.first_seen_at, r.response_id) as response_index,
           min(coalesce(q.started_at, r.first_seen_at)) over () as turn_seen_at
    from responses r left join requests q on q.request_id = r.request_id where r.run_id = $1
)
select * from (
    select 'run' as kind, 0 as step, 0 as item, run_id as id, status, created_at as started_at, 0.0 as offset_ms,
           duration_ms, prompt_tokens, completion_tokens, total_tokens, cost_usd,
           coalesce(assistant_id, (select api || ' turn' from runs where run_id = $1 and api <> 'assistants')) as name,
           model as detail, null::varchar as output,
           (select sum(client_ms) from tool_round_latency where run_id = $1) as client_ms,
           coalesce(last_error_code || ': ' || last_error_message, 'incomplete: ' || incomplete_reason) as error
    from run
    union all by name
    select 'step' as kind, s.step_index as step, 0 as item, s.step_id as id, s.status, s.created_at as started_at,
           (epoch_us(s.created_at) - epoch_us(run.created_at)) / 1000.0 as offset_ms, s.duration_ms,
           s.prompt_tokens, s.completion_tokens, s.total_tokens, s.type as name,
           s.last_error_code || ': ' || s.last_error_message as error
    from steps s, run
    union all by name
    select 'response' as kind, t.response_index as step, 0 as item, t.response_id as id, t.status,
           t.asked_at as started_at, (epoch_us(t.asked_at) - epoch_us(t.turn_seen_at)) / 1000.0 as offset_ms,
           case when t.status not in ('queued', 'in_progress')
                then (epoch_us(t.last_seen_at) - epoch_us(t.asked_at)) / 1000.0 end as duration_ms,
           t.input_tokens as prompt_tokens, t.output_tokens as completion_tokens, t.total_tokens,
           t.model as name, t.link_kind as detail,
           coalesce(t.error_code || ': ' || t.error_message, 'incomplete: ' || t.incomplete_reason) as error
    from turn t
    union all by name
    select 'item' as kind, t.response_index as step, 1000 + i.output_index as item, i.item_id as id, i.status,
           i.added_at as started_at, (epoch_us(i.added_at) - epoch_us(t.turn_seen_at)) / 1000.0 as offset_ms,
           (epoch_us(i.done_at) - epoch_us(i.added_at)) / 1000.0 as duration_ms, i.type as name,
           coalesce(i.text, i.arguments) as detail
    from response_items i join turn t using (response_id)
    where i.source = 'output' and i.type not in ('function_call', 'custom_tool_call')
    union all by name
    select 'tool_call' as kind, coalesce(s.step_index, t.response_index, 0) as step,
           1 + coalesce(c.call_index, 0) as item,
           c.tool_call_id as id,
           case when c.type <> 'function' then null when c.submitted_at is null then 'not submitted'
                else 'submitted' end as status,
           c.requested_at as started_at, c.name, c.arguments as detail, c.output,
           (epoch_us(c.submitted_at) - epoch_us(c.requested_at)) / 1000.0 as client_ms
    from tool_calls c left join steps s using (step_id) left join turn t on t.response_id = c.step_id
    where c.run_id = $1
    union all by name
    select 'message' as kind, coalesce(s.step_index, 1000000) as step, 1000 as item, m.message_id as id, m.status,
           m.created_at as started_at,
           (epoch_us(m.created_at) - epoch_us(run.created_at)) / 1000.0 as offset_ms,
           (epoch_us(m.completed_at) - epoch_us(m.created_at)) / 1000.0 as duration_ms, m.role as name,
           m.text as detail, 'incomplete: ' || m.incomplete_reason as error
    from messages m left join steps s on s.message_id = m.message_id, run
    where m.run_id = $1
)
order by step, item, started_at, id
"""

USAGE = """
select {group} as {name}, count(*) as runs,
       sum(prompt_tokens)::bigint as prompt_tokens, sum(completion_tokens)::bigint as completion_tokens,
       sum(total_tokens)::bigint as total_tokens, sum(cost_usd) as cost_usd,
       count(*) filter (where cost_usd is null and total_tokens > 0) as unpriced_runs
from runs_summary
where {where}
group by all
order by {order}
"""
USAGE_BY: dict[str, tuple[str, str]] = {
    "day": ("timezone('UTC', created_at)::date", "day"),
    "key": ("key_id", "key_id"),
    "model": ("model", "model"),
    "assistant": ("assistant_id", "assistant_id"),
}

TOOL_STATS = "select * from tool_stats order by p95_client_ms desc nulls last, calls desc, name"

PUBLIC_TABLES = """
select table_name from duckdb_tables()
where schema_name = 'main' and not internal and table_name not like '\\_%' escape '\\'
union all
select view_name from duckdb_views() where schema_name = 'main' and view_name = 'events'
order by 1
"""
"""The tables, and the one view that holds recorded data rather than a summary of it: `events`, the
events of `event_rows` and `response_streams` (migration m005) as one row each."""

# Each limit of each budget: the same figures as the proxy's GET /admin/budgets (proxy/budgets/
# report.py), from the tables of migration m003. A reservation past its settle_by counts as spent at
# its reserved amount, as the proxy settles it. The default budget (key_id '*') is shown for each
# key without an entry that holds charges in the last 30 days.
BUDGETS = """
with lim as (select * from budget_limits),
budgeted as (
    select key_id, key_alias, budget, unit, window_s, limit_value, position from lim where key_id <> '*'
    union all
    select k.key_id, d.key_alias, d.budget, d.unit, d.window_s, d.limit_value, d.position
    from (select distinct key_id from budget_charges
          where reserved_at > now() - interval 30 day
            and key_id not in (select key_id from lim where key_id <> '*')) k
    cross join (select * from lim where key_id = '*') d
),
charges as (
    select key_id, reserved_at, state = 'reserved' and settle_by > now() as open,
           reserved_tokens, reserved_usd,
           case when state = 'reserved' then reserved_tokens else spent_tokens end as spent_tokens,
           case when state = 'reserved' then reserved_usd else spent_usd end as spent_usd
    from budget_charges
)
select b.key_alias, b.key_id, b.budget, b.unit, b.window_s, b.limit_value as "limit",
       coalesce(sum(case when not c.open then (case when b.unit = 'tokens' then c.spent_tokens
                                                     else c.spent_usd end) end), 0)::double as used,
       coalesce(sum(case when c.open then (case when b.unit = 'tokens' then c.reserved_tokens
                                                 else c.reserved_usd end) end), 0)::double as reserved,
       min(c.reserved_at) + to_seconds(b.window_s) as resets_at, b.position,
       list_position(['tokens_per_minute', 'tokens_per_hour', 'tokens_per_day', 'tokens_per_30d', 'usd_per_day',
                      'usd_per_30d'], b.budget) as ordinal
from budgeted b
left join charges c on c.key_id = b.key_id and c.reserved_at > now() - to_seconds(b.window_s)
group by b.key_alias, b.key_id, b.budget, b.unit, b.window_s, b.limit_value, b.position
order by b.position, b.key_id, ordinal
"""
BUDGET_COLUMNS = ("key_alias", "key_id", "budget", "unit", "window_s", "limit", "used", "reserved", "remaining",
                  "resets_at")
BUDGET_TYPES = ["VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "BIGINT", "DOUBLE", "DOUBLE", "DOUBLE", "DOUBLE",
                "TIMESTAMP WITH TIME ZONE"]


def budgets(rec: Recording) -> Result:
    """Each budget limit: the proxy's own figures when it holds the file, else computed from it."""
    get_json = getattr(rec, "get_json", None)
    records = get_json("/admin/budgets")["budgets"] if get_json is not None else rec.query(BUDGETS).records()
    return budget_result(records)


def _whole(value: float) -> int:
    return round(value)


def _micro(value: float) -> float:
    return round(float(value), 6)


def budget_result(records: Sequence[dict[str, Any]]) -> Result:
    """One shape for both sources: whole tokens, USD to the micro-dollar, remaining = limit - used - reserved."""
    rows = []
    for r in records:
        exact = _whole if r["unit"] == "tokens" else _micro
        limit, used, reserved = exact(r["limit"]), exact(r["used"]), exact(r["reserved"])
        resets = r["resets_at"]
        if resets is not None:
            resets = datetime.fromisoformat(resets).astimezone(UTC).isoformat()
        rows.append([r["key_alias"], r["key_id"], r["budget"], r["unit"], int(r["window_s"]), limit, used, reserved,
                     exact(limit - used - reserved), resets])
    return Result(list(BUDGET_COLUMNS), list(BUDGET_TYPES), rows)


def runs(rec: Recording, *, status: Sequence[str] = (), key: str | None = None, since: datetime | None = None,
         limit: int = 20) -> Result:
    """Recorded runs, newest first."""
    where, params = ["true"], []
    if status:
        where.append("list_contains(?::varchar[], status)")
        params.append(list(status))
    if key:
        where.append("key_id = ?")
        params.append(key if key.startswith("sha256:") else f"sha256:{key}")
    if since:
        where.append("created_at >= ?::timestamptz")
        params.append(since.isoformat())
    return rec.query(RUNS.format(where=" and ".join(where)), [*params, limit])


def timeline(rec: Recording, run_id: str) -> Result:
    """One run: its row, then each step with its tool calls and message (empty if there is no such run)."""
    return rec.query(TIMELINE, [run_id])


def usage(rec: Recording, by: str = "day", since: datetime | None = None) -> Result:
    """Runs, tokens and cost grouped by day (newest first), key, model or assistant (costliest first)."""
    group, name = USAGE_BY[by]
    order = "1 desc" if by == "day" else "cost_usd desc nulls last, total_tokens desc nulls last, 1"
    where, params = ("created_at >= ?::timestamptz", [since.isoformat()]) if since else ("true", [])
    return rec.query(USAGE.format(group=group, name=name, where=where, order=order), params)


def tool_stats(rec: Recording) -> Result:
    """Per tool: calls, failures and client tool time percentiles, slowest first."""
    return rec.query(TOOL_STATS)


def public_tables(rec: Recording) -> list[str]:
    return [str(row[0]) for row in rec.query(PUBLIC_TABLES).rows]


COLUMNS = """
select column_name, data_type from duckdb_columns()
where schema_name = 'main' and table_name = ? order by column_index
"""
PRIMARY_KEY = """
select constraint_column_names from duckdb_constraints()
where schema_name = 'main' and table_name = ? and constraint_type = 'PRIMARY KEY'
"""
PAGE_ROWS = 10_000
"""Rows per /admin/sql request when exporting through a running proxy (its default row cap)."""


def export_parquet(rec: Recording, out_dir: Path) -> Result:
    """Every public table, and the events view, to ``<out_dir>/<table>.parquet``: one row per table with
    its row count and file.

    From the file, DuckDB copies each table directly. Through a running proxy, each table is paged
    in primary-key order over /admin/sql and rebuilt with its column types before it is written,
    so both give the same Parquet rows; the paged way is slow on big recordings.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[list[Any]] = []
    for table in public_tables(rec):
        target = out_dir / f"{table}.parquet"
        with duckdb.connect() as out:  # in-memory, with the file access the CLI's reader lacks
            out.execute("set TimeZone = 'UTC'")
            if isinstance(rec, FileRecording):
                out.execute(f"attach {_literal(rec.path)} as rec (read_only)")
                source = f"rec.main.{_ident(table)}"
            else:
                _rebuild(rec, table, out)
                source = "exported"
            (count,) = out.execute(f"copy {source} to {_literal(str(target))} (format parquet)").fetchone() or (0,)
        rows.append([table, count, str(target)])
    return Result(["table", "rows", "file"], ["VARCHAR", "BIGINT", "VARCHAR"], rows)


def _rebuild(rec: Recording, table: str, out: duckdb.DuckDBPyConnection) -> None:
    """Page ``table`` out of the proxy by primary key into ``out``'s table ``exported``, types intact."""
    columns = [(str(c), str(t)) for c, t in rec.query(COLUMNS, [table]).rows]
    # events has a key that is not a constraint (migration m004): page by it all the same.
    keys = [k for row in rec.query(PRIMARY_KEY, [table]).rows for k in row[0]] or list(APPEND_TABLES.get(table, ()))
    if not keys:
        raise QueryError(f"{table} has no primary key to page it by; stop the proxy and export the file")
    out.execute(f"create table exported ({', '.join(f'{_ident(c)} {t}' for c, t in columns)})")
    names = [c for c, _ in columns]
    order = ", ".join(map(_ident, keys))
    after: list[Any] = []
    while True:
        where = f"({order}) > ({', '.join('?' * len(keys))})" if after else "true"
        page = rec.query(f"select * from {_ident(table)} where {where} order by {order} limit {PAGE_ROWS}", after)
        if page.rows:
            _insert(out, columns, page.rows)
            after = [page.rows[-1][names.index(k)] for k in keys]
        if len(page.rows) < PAGE_ROWS and not page.truncated:
            return


def _insert(out: duckdb.DuckDBPyConnection, columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
    # The page crosses as one JSON document of columns (store/writer.py does the same, for speed);
    # BLOBs arrive base64-encoded (db.jsonable).
    structure = {c: ("VARCHAR" if t == "BLOB" else t) + "[]" for c, t in columns}
    values = [f"from_base64(unnest(j.{_ident(c)}))" if t == "BLOB" else f"unnest(j.{_ident(c)})" for c, t in columns]
    document = json.dumps({c: [row[i] for row in rows] for i, (c, _) in enumerate(columns)})
    out.execute(f"insert into exported select {', '.join(values)}"
                f" from (select from_json_strict(?, {_literal(json.dumps(structure))}) as j)", [document])


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_RELATIVE = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``24h``, ``7d``, ``2w``, ``today``, ``yesterday``, or an ISO date or time (UTC if no offset)."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value in ("today", "yesterday"):
        return midnight - timedelta(days=value == "yesterday")
    relative = _RELATIVE.match(value)
    if relative:
        amount: Any = {_UNITS[relative.group(2)]: int(relative.group(1))}
        return now - timedelta(**amount)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a time: use 24h, 7d, today, 2026-11-16 or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
