"""The recording's schema: append-only named migrations, and the table specs the writer obeys.

The tables and views created here are runtap's public SQL contract (contract.md §6), so the
schema only grows: never edit a shipped migration, append a new one (llm's ``migrations.py``).
Each migration runs in an explicit transaction because DuckDB 2.0 runs the statements of a script
in auto-commit mode: without ``BEGIN``, a failing statement would leave the earlier ones applied.

Everything the writer needs to know about a table (its columns in order, its key, whether rows are
appended or merged) is read back from a migrated database by :func:`table_specs`, so the DDL below
is the only copy of the column lists. ``python -m proxy.record.migrations --doc`` prints the schema
as Markdown (docs/schema.md).

Why one long module: it is the schema's single source, every table's DDL and column comments in
the order they shipped, and shipped migrations are never edited or moved.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import duckdb

MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
migration = MIGRATIONS.append

# Events are facts that arrive once and are never revised, so they are inserted. Their key is not
# a constraint (m004 dropped it: the index cost a third of the writer's time per event); the writer
# skips a repeated key within a batch, and a spill replay skips keys already stored, which keeps
# replay idempotent. Every other table describes an object whose fields become known piecemeal
# across events and exchanges: upserted by its primary key.
APPEND_TABLES: Mapping[str, tuple[str, ...]] = {
    "events": ("request_id", "seq"),  # before m005; from then on the view over the two below
    "event_rows": ("request_id", "seq"),
    "response_streams": ("request_id", "seq0"),
}

TABLE_ALIASES: Mapping[str, str] = {"events": "event_rows"}
"""Rows submitted (or spilled by an older version) for ``events`` are written to its row table."""

# How an upsert combines a known value with a new non-NULL one. The default is "the later value
# wins". These two columns are order-independent instead, so that a second exchange touching a
# run (or a replayed spill row, which is older than what was written after it) cannot move
# first_seen_at later or last_seen_at earlier.
MERGE_RULES: Mapping[str, Literal["min", "max"]] = {"first_seen_at": "min", "last_seen_at": "max"}

_TIMESTAMP_TYPES = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMP"})


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply every migration not yet recorded in ``_runtap_migrations``, each in its own transaction."""
    con.execute(
        "create table if not exists _runtap_migrations (name varchar primary key, applied_at timestamptz not null)"
    )
    applied = {name for (name,) in con.execute("select name from _runtap_migrations").fetchall()}
    for fn in MIGRATIONS:
        if fn.__name__ in applied:
            continue
        con.execute("begin transaction")
        try:
            fn(con)
            con.execute("insert into _runtap_migrations values (?, now())", [fn.__name__])
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise


def _run(con: duckdb.DuckDBPyConnection, *statements: str) -> None:
    # One execute() per statement: a multi-statement string would hide which one failed.
    for statement in statements:
        con.execute(statement)


@migration
def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    # Bodies, event data and tool arguments are VARCHAR, not JSON: DuckDB's JSON type rejects
    # malformed text ("Malformed JSON at byte 0"), and runtap forwards and records whatever the
    # client and upstream sent, `[DONE]` and broken frames included. VARCHAR keeps the exact text
    # (lossless), the json_* functions still read it, and one bad body cannot fail a whole batch.
    _run(
        con,
        """
        create table requests (
            request_id varchar primary key,
            started_at timestamptz,
            method varchar,
            path varchar,
            query varchar,
            route varchar,
            status integer,
            key_id varchar,
            upstream_request_id varchar,
            streamed boolean,
            ttfb_ms double,
            duration_ms double,
            outcome varchar,
            error varchar,
            thread_id varchar,
            run_id varchar,
            trace_id varchar,
            request_body varchar,
            response_body varchar,
            request_bytes bigint,
            response_bytes bigint,
            content_type varchar,
            event_count integer
        )
        """,
        "comment on table requests is 'One row per HTTP exchange through the proxy.'",
        "comment on column requests.route is"
        " 'Route template, e.g. POST /v1/threads/{thread_id}/runs (low cardinality).'",
        "comment on column requests.status is 'HTTP status the client got.'",
        "comment on column requests.outcome is"
        " 'How the exchange ended: completed, upstream_error, truncated, client_gone, rejected.'",
        "comment on column requests.request_body is"
        " 'Request body text exactly as received (may be invalid JSON); NULL if record_content = false.'",
        "comment on column requests.response_body is"
        " 'Non-streamed response body text exactly as received; NULL for streams (see events).'",
        # The primary key costs ~25% of insert CPU (15 vs 12 us per 600-byte row), and the writer
        # still sustains ~57,000 events/s with it; in exchange, a replayed spill is deduplicated by
        # a constraint (ON CONFLICT DO NOTHING) instead of an anti-join over the whole table.
        """
        create table events (
            request_id varchar not null,
            seq integer not null,
            event varchar,
            data varchar,
            received_at timestamptz,
            run_id varchar,
            raw blob,
            primary key (request_id, seq)
        )
        """,
        "comment on table events is 'One row per SSE event of a streamed response, the terminal done event included.'",
        "comment on column events.seq is 'Position of the event in its response, from 0.'",
        "comment on column events.data is"
        " 'The data field exactly as received: JSON for run objects, [DONE] for the end.'",
        "comment on column events.raw is 'The undecoded frame bytes, only for malformed frames.'",
        """
        create table runs (
            run_id varchar primary key,
            thread_id varchar,
            assistant_id varchar,
            model varchar,
            status varchar,
            key_id varchar,
            created_at timestamptz,
            started_at timestamptz,
            ended_at timestamptz,
            expires_at timestamptz,
            prompt_tokens bigint,
            completion_tokens bigint,
            total_tokens bigint,
            last_error_code varchar,
            last_error_message varchar,
            incomplete_reason varchar,
            tool_rounds integer,
            trace_id varchar,
            max_prompt_tokens integer,
            max_completion_tokens integer,
            request_count integer,
            first_seen_at timestamptz,
            last_seen_at timestamptz
        )
        """,
        "comment on table runs is 'One row per run, across all the exchanges that touched it; usage counted once.'",
        "comment on column runs.status is 'The run object''s status field (never the event name).'",
        """
        create table run_steps (
            step_id varchar primary key,
            run_id varchar,
            thread_id varchar,
            type varchar,
            status varchar,
            created_at timestamptz,
            ended_at timestamptz,
            prompt_tokens bigint,
            completion_tokens bigint,
            total_tokens bigint,
            last_error_code varchar,
            last_error_message varchar,
            message_id varchar,
            first_seen_at timestamptz,
            last_seen_at timestamptz
        )
        """,
        "comment on table run_steps is 'One row per run step (message_creation or tool_calls).'",
        """
        create table tool_calls (
            tool_call_id varchar primary key,
            step_id varchar,
            run_id varchar,
            type varchar,
            name varchar,
            arguments varchar,
            output varchar,
            requested_at timestamptz,
            submitted_at timestamptz,
            call_index integer
        )
        """,
        "comment on table tool_calls is 'One row per tool call; submitted_at is when the client sent its output.'",
        """
        create table messages (
            message_id varchar primary key,
            thread_id varchar,
            run_id varchar,
            assistant_id varchar,
            role varchar,
            status varchar,
            text varchar,
            created_at timestamptz,
            completed_at timestamptz,
            incomplete_reason varchar
        )
        """,
        "comment on table messages is 'One row per message; text is the concatenated text content.'",
    )
    for column, text in _M001_COLUMN_DOCS.items():
        _run(con, f"comment on column {column} is '{text.replace(chr(39), chr(39) * 2)}'")


# Column docs of m001 (docs/schema.md is generated from them). Frozen with m001.
_M001_COLUMN_DOCS: dict[str, str] = {
    "requests.request_id": "runtap's id of the exchange (rt_ + 32 hex).",
    "requests.started_at": "When the request reached runtap.",
    "requests.method": "HTTP method.",
    "requests.path": "Request path as sent by the client (/v1/... or /openai/...).",
    "requests.query": "Query string, e.g. api-version=... for Azure.",
    "requests.key_id": "sha256: + 16 hex of the API key (Authorization: Bearer or api-key); never the key.",
    "requests.upstream_request_id": "The upstream's x-request-id.",
    "requests.streamed": "The response was an SSE stream.",
    "requests.ttfb_ms": "Time from the request reaching runtap to the upstream's response headers.",
    "requests.duration_ms": "Time from the request reaching runtap to the end of the exchange.",
    "requests.error": "What went wrong, for outcomes other than completed.",
    "requests.thread_id": "Thread the exchange touched (from the path or the response).",
    "requests.run_id": "Run the exchange touched (from the path or the response).",
    "requests.trace_id": "OpenTelemetry trace id of the run, when tracing is on.",
    "requests.request_bytes": "Size of the recorded request body.",
    "requests.response_bytes": "Response body bytes relayed, as sent on the wire (compressed if it was).",
    "requests.content_type": "The upstream's Content-Type.",
    "requests.event_count": "SSE events in the response (rows in events).",
    "events.request_id": "The exchange the event arrived in (requests.request_id).",
    "events.event": "The SSE event name (thread.run.created, ..., done); NULL if the frame had none.",
    "events.received_at": "When runtap relayed the event.",
    "events.run_id": "The run the exchange belongs to.",
    "runs.run_id": "The run's id (run_...).",
    "runs.thread_id": "Its thread.",
    "runs.assistant_id": "Its assistant.",
    "runs.model": "The model the run used (from the run object).",
    "runs.key_id": "Fingerprint of the key that created or first touched the run.",
    "runs.created_at": "The run object's created_at.",
    "runs.started_at": "The run object's started_at.",
    "runs.ended_at": "When the run reached a terminal status (the object's timestamp, else runtap's clock).",
    "runs.expires_at": "The run object's expires_at.",
    "runs.prompt_tokens": "Final usage: the latest cumulative snapshot, never summed across exchanges.",
    "runs.completion_tokens": "Final usage, as prompt_tokens.",
    "runs.total_tokens": "Final usage, as prompt_tokens.",
    "runs.last_error_code": "last_error.code of a failed run.",
    "runs.last_error_message": "last_error.message of a failed run.",
    "runs.incomplete_reason": "incomplete_details.reason of an incomplete run.",
    "runs.tool_rounds": "How many times the run paused in requires_action.",
    "runs.trace_id": "OpenTelemetry trace id of the run, when tracing is on.",
    "runs.max_prompt_tokens": "The run's max_prompt_tokens.",
    "runs.max_completion_tokens": "The run's max_completion_tokens.",
    "runs.request_count": "Exchanges that carried this run's object (creates, continuations, polls).",
    "runs.first_seen_at": "When runtap first saw the run.",
    "runs.last_seen_at": "When runtap last saw the run.",
    "run_steps.step_id": "The step's id (step_...).",
    "run_steps.run_id": "Its run.",
    "run_steps.thread_id": "Its thread.",
    "run_steps.type": "message_creation or tool_calls.",
    "run_steps.status": "in_progress, completed, failed, cancelled or expired.",
    "run_steps.created_at": "The step object's created_at.",
    "run_steps.ended_at": "When the step reached a terminal status.",
    "run_steps.prompt_tokens": "The step's usage (filled when it completes).",
    "run_steps.completion_tokens": "The step's usage.",
    "run_steps.total_tokens": "The step's usage.",
    "run_steps.last_error_code": "last_error.code of a failed step.",
    "run_steps.last_error_message": "last_error.message of a failed step.",
    "run_steps.message_id": "The message a message_creation step created.",
    "run_steps.first_seen_at": "When runtap first saw the step.",
    "run_steps.last_seen_at": "When runtap last saw the step.",
    "tool_calls.tool_call_id": "The call's id (call_...).",
    "tool_calls.step_id": "The tool_calls step it belongs to.",
    "tool_calls.run_id": "Its run.",
    "tool_calls.type": "function, code_interpreter or file_search.",
    "tool_calls.name": "The function name, or the builtin tool's type.",
    "tool_calls.arguments": "Function arguments (JSON text) or code_interpreter input.",
    "tool_calls.output": "The output the client submitted, or the builtin tool's outputs as JSON.",
    "tool_calls.requested_at": "When runtap saw the run ask for it (requires_action).",
    "tool_calls.submitted_at": "When the client submitted its output: submitted_at - requested_at is client tool time.",
    "tool_calls.call_index": "Position of the call in its step.",
    "messages.message_id": "The message's id (msg_...).",
    "messages.thread_id": "Its thread.",
    "messages.run_id": "The run that wrote it (NULL for user messages).",
    "messages.assistant_id": "The assistant that wrote it.",
    "messages.role": "assistant or user.",
    "messages.status": "in_progress, completed or incomplete.",
    "messages.created_at": "The message object's created_at.",
    "messages.completed_at": "The message object's completed_at.",
    "messages.incomplete_reason": "incomplete_details.reason of an incomplete message.",
    "messages.text": "The text content, concatenated (from deltas until the completed snapshot arrives).",
}


# List prices of OpenAI models in USD per million tokens (input, output), standard tier. They seed
# the `prices` table (m002), and the proxy rewrites the table at every start from this list and
# the config's [prices] (app.py, `set_prices`), so a newer list reaches an old recording without a
# migration. Cached-input and batch discounts are not modelled: runs record no cached tokens.
PRICES_AS_OF = "2026-06-21"
PRICES_SOURCE = f"list prices as of {PRICES_AS_OF} (platform.openai.com/docs/pricing, standard tier)"
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.0, 8.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "o1": (15.0, 60.0),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class ModelPrice(Protocol):
    @property
    def input_usd_per_1m(self) -> float: ...
    @property
    def output_usd_per_1m(self) -> float: ...


def price_rows(overrides: Mapping[str, ModelPrice] | None = None) -> list[dict[str, object]]:
    """Rows of the `prices` table: the shipped list, with the config's entries replacing or adding models."""
    rows: dict[str, dict[str, object]] = {
        model: {"model": model, "input_usd_per_1m": i, "output_usd_per_1m": o, "source": PRICES_SOURCE}
        for model, (i, o) in DEFAULT_PRICES.items()
    }
    for model, price in (overrides or {}).items():
        rows[model] = {"model": model, "input_usd_per_1m": price.input_usd_per_1m,
                       "output_usd_per_1m": price.output_usd_per_1m, "source": "config"}
    return list(rows.values())


def set_prices(con: duckdb.DuckDBPyConnection, overrides: Mapping[str, ModelPrice] | None = None) -> None:
    """Make `prices` exactly the shipped list plus the config's entries, in one transaction.

    Written once at start, before traffic, on its own cursor: prices are configuration, not
    recording, so they skip the recorder's queue (and its row counters).
    """
    con.execute("begin transaction")
    try:
        con.execute("delete from prices")
        con.executemany(_INSERT_PRICE, price_rows(overrides))
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise


_INSERT_PRICE = "insert into prices values ($model, $input_usd_per_1m, $output_usd_per_1m, $source)"


@migration
def m002_views(con: duckdb.DuckDBPyConnection) -> None:
    # The views are the documented way to ask the common questions (README, "Querying"); they
    # read only m001's columns, so they survive any later additive migration. Prices are a table,
    # not constants in a view, so the operator's [prices] can replace them and a query can show
    # what a run was priced at.
    _run(
        con,
        "create table prices (model varchar primary key, input_usd_per_1m double, output_usd_per_1m double,"
        " source varchar)",
    )
    con.executemany(_INSERT_PRICE, price_rows())
    _run(con, _M002_RUNS_SUMMARY, _M002_STEP_LATENCY, _M002_TOOL_ROUND_LATENCY, _M002_TOOL_STATS,
         _M002_USAGE_BY_KEY_DAY)
    for name, text in _M002_DOCS.items():
        kind = "column" if "." in name else ("table" if name == "prices" else "view")
        _run(con, f"comment on {kind} {name} is '{text.replace(chr(39), chr(39) * 2)}'")


# Durations subtract microsecond epochs (exact to the microsecond, unlike date_diff's whole units).
_M002_RUNS_SUMMARY = """
create view runs_summary as
with model_prices as (
    select m.model,
           arg_max(p.model, length(p.model)) as priced_as,
           arg_max(p.input_usd_per_1m, length(p.model)) as input_usd_per_1m,
           arg_max(p.output_usd_per_1m, length(p.model)) as output_usd_per_1m
    from (select distinct model from runs) m
    join prices p on m.model = p.model or starts_with(m.model, p.model || '-')
    group by m.model
)
select r.run_id, r.thread_id, r.assistant_id, r.model, r.key_id, r.status,
       coalesce(r.created_at, r.first_seen_at) as created_at,
       r.ended_at,
       (epoch_us(r.ended_at) - epoch_us(coalesce(r.created_at, r.first_seen_at))) / 1000.0 as duration_ms,
       (epoch_us(r.started_at) - epoch_us(r.created_at)) / 1000.0 as queued_ms,
       r.tool_rounds,
       r.prompt_tokens, r.completion_tokens, r.total_tokens,
       p.priced_as,
       r.prompt_tokens * p.input_usd_per_1m / 1e6 + r.completion_tokens * p.output_usd_per_1m / 1e6 as cost_usd,
       r.last_error_code, r.last_error_message, r.incomplete_reason, r.request_count
from runs r
left join model_prices p on p.model = r.model
"""

_M002_STEP_LATENCY = """
create view step_latency as
select s.step_id, s.run_id,
       row_number() over (partition by s.run_id order by s.created_at, s.first_seen_at, s.step_id) as step_index,
       r.assistant_id, r.model, s.type, s.status, s.created_at, s.ended_at,
       (epoch_us(s.ended_at) - epoch_us(s.created_at)) / 1000.0 as duration_ms,
       (epoch_us(s.created_at) - epoch_us(coalesce(
           lag(s.ended_at) over (partition by s.run_id order by s.created_at, s.first_seen_at, s.step_id),
           r.started_at, r.created_at))) / 1000.0 as wait_ms,
       s.prompt_tokens, s.completion_tokens, s.total_tokens, s.last_error_code, s.last_error_message
from run_steps s
left join runs r on r.run_id = s.run_id
"""

# A tool round is the calls of one requires_action: they share requested_at (when the run asked) and
# submitted_at (one submit_tool_outputs carries every output), so the round's client time is not
# the sum of its calls' times. Per round rather than per run, so a query that does not need it
# (runs_summary, the commands' run lists) never pays for grouping every tool call.
_M002_TOOL_ROUND_LATENCY = """
create view tool_round_latency as
select run_id,
       row_number() over (partition by run_id order by requested_at) as round,
       any_value(step_id) as step_id,
       count(*) as calls,
       string_agg(name, ', ' order by call_index, name) as tools,
       requested_at,
       max(submitted_at) as submitted_at,
       (epoch_us(max(submitted_at)) - epoch_us(requested_at)) / 1000.0 as client_ms
from tool_calls
where type = 'function'
group by run_id, requested_at
"""

# A call failed when its step did not complete, when its function output never arrived before the
# run ended, or when the output the client submitted is a JSON object with an "error" member (the
# usual way a tool reports failure to the model). The joins keep only the rare rows they need
# (failed steps, runs still going), so the view costs one pass over tool_calls.
_M002_TOOL_STATS = """
create view tool_stats as
with calls as (
    select c.name, c.type,
           (epoch_us(c.submitted_at) - epoch_us(c.requested_at)) / 1000.0 as client_ms,
           s.step_id is not null
           or (c.type = 'function' and c.submitted_at is null and a.run_id is null)
           or coalesce(regexp_matches(c.output, '^\\s*\\{\\s*"error"\\s*:'), false) as failed
    from tool_calls c
    left join (select step_id from run_steps where status in ('failed', 'cancelled', 'expired')) s
        on s.step_id = c.step_id
    left join (select run_id from runs where status in ('queued', 'in_progress', 'requires_action', 'cancelling')) a
        on a.run_id = c.run_id
)
select name, type,
       count(*) as calls,
       count(*) filter (where failed) as failures,
       count(*) filter (where failed) / count(*) as failure_rate,
       quantile_cont(client_ms, 0.5) as p50_client_ms,
       quantile_cont(client_ms, 0.95) as p95_client_ms,
       max(client_ms) as max_client_ms
from calls
group by name, type
"""

_M002_USAGE_BY_KEY_DAY = """
create view usage_by_key_day as
select key_id,
       timezone('UTC', created_at)::date as day,
       count(*) as runs,
       sum(prompt_tokens)::bigint as prompt_tokens,
       sum(completion_tokens)::bigint as completion_tokens,
       sum(total_tokens)::bigint as total_tokens,
       sum(cost_usd) as cost_usd,
       count(*) filter (where cost_usd is null and total_tokens > 0) as unpriced_runs
from runs_summary
group by key_id, day
"""

# Docs of m002's objects (docs/schema.md is generated from them). Frozen with m002.
_M002_DOCS: dict[str, str] = {
    "prices": "USD per million tokens per model, for the cost_usd columns. Shipped with OpenAI's list prices "
    "(source says as of when); the config's [prices] replaces or adds models at each proxy start. A run's model "
    "is priced by its exact name, else by the longest name here it starts with followed by a dash "
    "(gpt-4o-2024-08-06 is priced as gpt-4o).",
    "prices.model": "Model name as it appears in runs.model (for Azure, the deployment name).",
    "prices.input_usd_per_1m": "USD per million prompt (input) tokens.",
    "prices.output_usd_per_1m": "USD per million completion (output) tokens.",
    "prices.source": "Where the price comes from: the shipped list and its date, or config.",
    "runs_summary": "One row per run: how long it took, its tool rounds, tokens and cost. The starting point for "
    "most questions; tool_round_latency has the client's tool time.",
    "runs_summary.run_id": "The run's id.",
    "runs_summary.thread_id": "Its thread.",
    "runs_summary.assistant_id": "Its assistant.",
    "runs_summary.model": "The model the run used.",
    "runs_summary.key_id": "Fingerprint of the API key that created it.",
    "runs_summary.status": "The run's last status.",
    "runs_summary.created_at": "The run object's created_at (runtap's first sight if unknown).",
    "runs_summary.ended_at": "When it reached a terminal status; NULL while it runs.",
    "runs_summary.duration_ms": "created_at to ended_at: queueing, model calls and the client's tool time. "
    "Run timestamps have one-second resolution.",
    "runs_summary.queued_ms": "created_at to started_at.",
    "runs_summary.tool_rounds": "How many times the run paused in requires_action.",
    "runs_summary.prompt_tokens": "Final usage of the run.",
    "runs_summary.completion_tokens": "Final usage of the run.",
    "runs_summary.total_tokens": "Final usage of the run.",
    "runs_summary.priced_as": "The prices.model the run was priced by; NULL if its model has no price.",
    "runs_summary.cost_usd": "prompt_tokens and completion_tokens at the model's price; NULL if unpriced "
    "or without usage.",
    "runs_summary.last_error_code": "last_error.code of a failed run.",
    "runs_summary.last_error_message": "last_error.message of a failed run.",
    "runs_summary.incomplete_reason": "incomplete_details.reason of an incomplete run.",
    "runs_summary.request_count": "Exchanges that carried the run (creates, continuations, polls).",
    "step_latency": "One row per run step with its duration, the wait before it, and its usage: which model "
    "calls are slow.",
    "step_latency.step_id": "The step's id.",
    "step_latency.run_id": "Its run.",
    "step_latency.step_index": "Position of the step in its run, from 1.",
    "step_latency.assistant_id": "The run's assistant.",
    "step_latency.model": "The run's model.",
    "step_latency.type": "message_creation or tool_calls.",
    "step_latency.status": "The step's last status.",
    "step_latency.created_at": "The step object's created_at.",
    "step_latency.ended_at": "When the step reached a terminal status.",
    "step_latency.duration_ms": "created_at to ended_at: the model call that made the step (one-second "
    "resolution, from the upstream's timestamps).",
    "step_latency.wait_ms": "From the previous step's end (or the run's start) to this step's creation: after "
    "a tool_calls step, the client's tool time plus queueing.",
    "step_latency.prompt_tokens": "The step's usage.",
    "step_latency.completion_tokens": "The step's usage.",
    "step_latency.total_tokens": "The step's usage.",
    "step_latency.last_error_code": "last_error.code of a failed step.",
    "step_latency.last_error_message": "last_error.message of a failed step.",
    "tool_round_latency": "One row per tool round of a run (the function calls of one requires_action): when the "
    "run asked, when the client submitted the outputs, and the client's time in between (runtap's clock).",
    "tool_round_latency.run_id": "The run.",
    "tool_round_latency.round": "Position of the round in its run, from 1.",
    "tool_round_latency.step_id": "The tool_calls step (NULL if the client polled and never listed steps).",
    "tool_round_latency.calls": "Function calls in the round (parallel tool calls).",
    "tool_round_latency.tools": "Their function names.",
    "tool_round_latency.requested_at": "When the run asked for the outputs (requires_action).",
    "tool_round_latency.submitted_at": "When the client submitted them; NULL if it never did.",
    "tool_round_latency.client_ms": "submitted_at - requested_at: the client's tool time for the round.",
    "tool_stats": "One row per tool (name and type): calls, failures and the client's tool time percentiles. "
    "A call failed when its step did not complete, when its function output never arrived before the run "
    "ended, or when the submitted output is a JSON object with an \"error\" member.",
    "tool_stats.name": "The function name, or the builtin tool's type.",
    "tool_stats.type": "function, code_interpreter or file_search.",
    "tool_stats.calls": "Calls made.",
    "tool_stats.failures": "Calls that failed (see the view's description).",
    "tool_stats.failure_rate": "failures / calls.",
    "tool_stats.p50_client_ms": "Median client tool time (submitted_at - requested_at) of function calls.",
    "tool_stats.p95_client_ms": "95th percentile client tool time.",
    "tool_stats.max_client_ms": "Longest client tool time.",
    "usage_by_key_day": "Tokens and cost per API key per UTC day (of the run's created_at).",
    "usage_by_key_day.key_id": "Fingerprint of the API key.",
    "usage_by_key_day.day": "UTC date the runs were created.",
    "usage_by_key_day.runs": "Runs created that day with that key.",
    "usage_by_key_day.prompt_tokens": "Their prompt tokens.",
    "usage_by_key_day.completion_tokens": "Their completion tokens.",
    "usage_by_key_day.total_tokens": "Their total tokens.",
    "usage_by_key_day.cost_usd": "Their cost; priced runs only (see unpriced_runs).",
    "usage_by_key_day.unpriced_runs": "Runs with tokens whose model has no price: not in cost_usd.",
}



@migration
def m003_budgets(con: duckdb.DuckDBPyConnection) -> None:
    # The budget ledger (proxy/budgets): one row per charge, upserted through the writer like a
    # run, so it survives a restart. Limits are configuration (rewritten at start and on SIGHUP,
    # like prices), kept so that `runtap budgets` can report a stopped proxy's file.
    _run(
        con,
        """
        create table budget_charges (
            charge_id varchar primary key,
            key_id varchar,
            key_alias varchar,
            run_id varchar,
            model varchar,
            reserved_at timestamptz,
            settle_by timestamptz,
            reserved_tokens bigint,
            reserved_usd double,
            state varchar,
            spent_tokens bigint,
            spent_usd double,
            settled_at timestamptz,
            cancelled_by_budget_at timestamptz
        )
        """,
        """
        create table budget_limits (
            key_id varchar,
            budget varchar,
            key_alias varchar,
            unit varchar,
            window_s bigint,
            limit_value double,
            position integer,
            clamp boolean,
            cancel_on_exhaustion boolean,
            primary key (key_id, budget)
        )
        """,
    )
    for name, text in _M003_DOCS.items():
        kind = "column" if "." in name else "table"
        _run(con, f"comment on {kind} {name} is '{text.replace(chr(39), chr(39) * 2)}'")


# Docs of m003's objects (docs/schema.md is generated from them). Frozen with m003.
_M003_DOCS: dict[str, str] = {
    "budget_charges": "One row per budget charge: a run's reservation, replaced by its final usage when it ends "
    "(README, Budgets). A key's spend in a window is the sum over charges reserved inside it.",
    "budget_charges.charge_id": "The request_id of the exchange that reserved it (requests.request_id).",
    "budget_charges.key_id": "Fingerprint of the key that pays.",
    "budget_charges.key_alias": "The key's budget alias when it was reserved, or other.",
    "budget_charges.run_id": "The run it pays for, once known.",
    "budget_charges.model": "The run's model (from the request, then the run object), for USD.",
    "budget_charges.reserved_at": "Admission time: the charge counts in every window that contains it.",
    "budget_charges.settle_by": "An open reservation is settled at its reserved amount at this time (the run's "
    "expires_at plus a minute, else settle_unseen_after_s after admission).",
    "budget_charges.reserved_tokens": "Tokens reserved (max_prompt_tokens + max_completion_tokens, or the default; "
    "plus continuation top-ups).",
    "budget_charges.reserved_usd": "USD reserved, at the model's dearer rate (or the dearest in prices).",
    "budget_charges.state": "reserved (run in flight), settled (final usage), expired (never seen to end: "
    "charged its reservation) or released (no run was created).",
    "budget_charges.spent_tokens": "What the charge costs once not reserved: the run's final total_tokens, once.",
    "budget_charges.spent_usd": "The final usage at the model's prices.",
    "budget_charges.settled_at": "When the state last left reserved.",
    "budget_charges.cancelled_by_budget_at": "When runtap cancelled the run upstream because its budget ran out "
    "(cancel_on_exhaustion).",
    "budget_limits": "The budgets in force: one row per limit of each configured key (key_id * is the default "
    "budget of keys without an entry). Rewritten from [budgets] at every start and SIGHUP.",
    "budget_limits.budget": "The limit: tokens_per_minute, tokens_per_hour, tokens_per_day, tokens_per_30d, "
    "usd_per_day or usd_per_30d.",
    "budget_limits.key_alias": "The alias in metrics and reports (other for the default budget).",
    "budget_limits.unit": "tokens or usd.",
    "budget_limits.window_s": "The rolling window in seconds.",
    "budget_limits.limit_value": "The limit, in unit per window.",
    "budget_limits.position": "Order of the budget in the config.",
    "budget_limits.clamp": "clamp is on for this budget.",
    "budget_limits.cancel_on_exhaustion": "cancel_on_exhaustion is on for this budget.",
}

@migration
def m004_events_unkeyed(con: duckdb.DuckDBPyConnection) -> None:
    # DuckDB cannot drop a primary key, so the table is rebuilt without it, comments included.
    # On a large recording this copies every event once, at the first start of this version.
    # Measured before (2 cores, 20,000-row batches of benchmark events): 8.5 us per event row with
    # the (request_id, seq) index, 5.5 without; that was a third of the writer's time per stream.
    comments = con.execute(
        "select column_name, comment from duckdb_columns() where schema_name = 'main' and table_name = 'events'"
        " and comment is not null"
    ).fetchall()
    (table_comment,) = con.execute(
        "select comment from duckdb_tables() where schema_name = 'main' and table_name = 'events'"
    ).fetchone() or (None,)
    _run(
        con,
        """
        create table events_unkeyed (
            request_id varchar not null,
            seq integer not null,
            event varchar,
            data varchar,
            received_at timestamptz,
            run_id varchar,
            raw blob
        )
        """,
        "insert into events_unkeyed select request_id, seq, event, data, received_at, run_id, raw from events",
        "drop table events",
        "alter table events_unkeyed rename to events",
    )
    if table_comment:
        _run(con, f"comment on table events is {_quote(table_comment)}")
    for column, text in comments:
        _run(con, f"comment on column events.{column} is {_quote(text)}")


EVENTS_VIEW = """
create or replace view events as
select request_id, seq, event, data, received_at, run_id, raw from event_rows
union all
select f.request_id, f.seq, f.event, f.data, make_timestamp((c.arrived * 1e6)::bigint)::timestamptz, f.run_id,
       null::blob
from (
    select request_id, run_id, (seq0 + i - 1)::integer as seq,
           case when starts_with(frame, 'event: ') then substr(frame, 8, strpos(frame, chr(10)) - 8) end as event,
           case when starts_with(frame, 'event: ') then substr(frame, strpos(frame, chr(10)) + 7)
                else substr(frame, 7) end as data,
           -- the byte that dispatches the frame (its blank line) is the last of these
           (sum(strlen(frame) + 2) over (partition by request_id, seq0 order by i rows unbounded preceding))::integer
               as dispatch_end,
           seq0
    from (
        select request_id, run_id, seq0, len(frames) as parts, unnest(frames) as frame,
               generate_subscripts(frames, 1) as i
        from (select request_id, run_id, seq0, string_split(body, chr(10) || chr(10)) as frames
              from response_streams)
        ) as split
    where i < parts  -- the text after the last blank line: empty, in canonical framing
) as f
asof join (
    select request_id, seq0, unnest(chunk_ends) as chunk_end, unnest(chunk_times) as arrived from response_streams
) as c
on f.request_id = c.request_id and f.seq0 = c.seq0 and f.dispatch_end <= c.chunk_end
"""
"""Every SSE event: the rows of ``event_rows``, and the frames of each ``response_streams`` segment,
split here in DuckDB (segments hold only canonical framing, ``record/streams.py``, so splitting at
blank lines gives exactly the frames runtap's own parser gives). An event's ``received_at`` is the
arrival of the chunk that held its blank line, as when it was parsed on arrival."""


@migration
def m005_event_streams(con: duckdb.DuckDBPyConnection) -> None:
    # Issue #13: a stream's events were one row each, ~60 per run, and DuckDB's intake of them
    # (insert, WAL, compression at checkpoint) cost ~0.5 ms per run. A stream is now stored as the
    # bytes it came as (zstd: the checkpoint's default string compression cost ~0.2 ms per run, zstd
    # ~0.02 ms), and the events view splits it when read. Malformed and non-canonical streams, and
    # every stream under record_content = false, are still rows (event_rows).
    _run(
        con,
        "alter table events rename to event_rows",
        "comment on table event_rows is 'SSE events stored one row each: the frames of streams that are not"
        " canonically framed (CR line endings, comments, several data lines, malformed or cut-off frames) and every"
        " stream recorded with record_content = false. Read events, which includes them.'",
        """
        create table response_streams (
            request_id varchar not null,
            seq0 integer not null,
            run_id varchar,
            body varchar using compression zstd,
            chunk_ends integer[],
            chunk_times double[]
        )
        """,
        "comment on table response_streams is 'A streamed response (or a segment of a long one) as the bytes"
        " runtap relayed, decompressed; its events are rows of the events view.'",
        "comment on column response_streams.seq0 is 'seq of the first event in this segment.'",
        "comment on column response_streams.body is 'The SSE text exactly as received, whole frames only.'",
        "comment on column response_streams.chunk_ends is 'Byte offset in body where each received chunk ended.'",
        "comment on column response_streams.chunk_times is 'Arrival of each chunk, seconds since the epoch (UTC).'",
        EVENTS_VIEW,
        "comment on view events is 'One row per SSE event of a streamed response, the terminal done event"
        " included.'",
        "comment on column events.seq is 'Position of the event in its response, from 0.'",
        "comment on column events.data is"
        " 'The data field exactly as received: JSON for run objects, [DONE] for the end.'",
        "comment on column events.raw is 'The undecoded frame bytes, only for malformed frames.'",
        "comment on column events.request_id is 'The exchange the event arrived in (requests.request_id).'",
        "comment on column events.event is"
        " 'The SSE event name (thread.run.created, ..., done); NULL if the frame had none.'",
        "comment on column events.received_at is 'When runtap relayed the event.'",
        "comment on column events.run_id is 'The run the exchange belongs to.'",
    )


def _responses_events_view(inner: str, stored_sequence_number: str | None) -> str:
    """The events view over `inner` (m005's union), with what a Responses event carries: its
    `sequence_number` (from its data, else `stored_sequence_number`, a column of `inner`) and the
    response it belongs to (its own `response` object's id, else the exchange's). Read from the data
    when queried, so nothing is done per event when it is written."""
    from_data = ("case when json_valid(e.data) then try_cast(json_extract_string(e.data, '$.sequence_number')"
                 " as bigint) end")
    number = f"coalesce({from_data}, e.{stored_sequence_number})" if stored_sequence_number else from_data
    return ("create or replace view events as"
            " select e.request_id, e.seq, e.event, e.data, e.received_at, e.run_id, e.raw,"
            f" {number} as sequence_number,"
            " coalesce(case when json_valid(e.data) then json_extract_string(e.data, '$.response.id') end,"
            " r.response_id) as response_id"
            f" from ({inner}) as e left join requests as r on r.request_id = e.request_id")


EVENTS_VIEW_RESPONSES = _responses_events_view(EVENTS_VIEW.split(" as\n", 1)[1], None)
"""m006's events: m005's plus each Responses event's `sequence_number` and response."""


def _events_view_comments(sequence_number: str) -> list[str]:
    """The events view's comments (re-created with the view by each migration that replaces it)."""
    return [
        "comment on view events is 'One row per SSE event of a streamed response, the terminal done event"
        " included.'",
        "comment on column events.seq is 'Position of the event in its response, from 0.'",
        "comment on column events.data is"
        " 'The data field exactly as received: JSON for run objects, [DONE] for the end.'",
        "comment on column events.raw is 'The undecoded frame bytes, only for malformed frames.'",
        "comment on column events.request_id is 'The exchange the event arrived in (requests.request_id).'",
        "comment on column events.event is"
        " 'The SSE event name (thread.run.created, response.created, ..., done); NULL if the frame had none.'",
        "comment on column events.received_at is 'When runtap relayed the event.'",
        "comment on column events.run_id is 'The run (or turn) the exchange belongs to.'",
        f"comment on column events.sequence_number is {_quote(sequence_number)}",
        "comment on column events.response_id is 'The Responses API response the event belongs to.'",
    ]


@migration
def m006_responses(con: duckdb.DuckDBPyConnection) -> None:
    # Issue #14: the Responses API recorded as deeply as Assistants runs (protocol-responses.md
    # section 11, option C): each response and item as the server reported it; a turn is a run.
    _run(
        con,
        "alter table runs add column api varchar default 'assistants'",
        "comment on column runs.api is"
        " 'Which API the run is of: assistants (a run), responses or chat (a turn: one user request and every"
        " response until the final answer).'",
        "alter table requests add column response_id varchar",
        "comment on column requests.response_id is 'The Responses API response the exchange created or touched.'",
        """
        create table responses (
            response_id varchar primary key,
            run_id varchar,
            previous_response_id varchar,
            conversation_id varchar,
            model varchar,
            status varchar,
            background boolean,
            store boolean,
            service_tier varchar,
            key_id varchar,
            created_at timestamptz,
            ended_at timestamptz,
            input_tokens bigint,
            cached_tokens bigint,
            cache_write_tokens bigint,
            output_tokens bigint,
            reasoning_tokens bigint,
            total_tokens bigint,
            incomplete_reason varchar,
            error_code varchar,
            error_message varchar,
            max_output_tokens bigint,
            trace_id varchar,
            request_id varchar,
            first_seen_at timestamptz,
            last_seen_at timestamptz
        )
        """,
        "comment on table responses is 'One row per Responses API response (resp_...), as the server reported it.'",
        "comment on column responses.run_id is 'The turn (runs.run_id, api = responses) the response belongs to.'",
        "comment on column responses.status is"
        " 'From the response object (queued, in_progress, completed, incomplete, failed, cancelled);"
        " truncated when its stream ended before a terminal event.'",
        "comment on column responses.created_at is 'The response object''s created_at (upstream data).'",
        "comment on column responses.ended_at is"
        " 'The response object''s completed_at, else when runtap saw its terminal status.'",
        "comment on column responses.input_tokens is 'usage.input_tokens, exactly as billed (cached included).'",
        "comment on column responses.cached_tokens is 'usage.input_tokens_details.cached_tokens.'",
        "comment on column responses.reasoning_tokens is 'usage.output_tokens_details.reasoning_tokens.'",
        "comment on column responses.max_output_tokens is 'The request''s max_output_tokens.'",
        "comment on column responses.request_id is 'The exchange that created the response.'",
        "comment on column responses.first_seen_at is 'When runtap first saw the response (its own clock).'",
        "comment on column responses.last_seen_at is 'When runtap last saw it change.'",
        """
        create table response_items (
            item_id varchar primary key,
            response_id varchar,
            source varchar,
            output_index integer,
            type varchar,
            status varchar,
            role varchar,
            call_id varchar,
            name varchar,
            arguments varchar,
            output varchar,
            text varchar,
            added_at timestamptz,
            done_at timestamptz
        )
        """,
        "comment on table response_items is"
        " 'One row per output item of a response, and per tool-result item (function_call_output, ...) a request"
        " sent.'",
        "comment on column response_items.source is"
        " 'output (the response made it) or input (the request carried it: a tool result).'",
        "comment on column response_items.item_id is"
        " 'The item''s id; for an input item without one, <response_id>/input/<its index in the input>.'",
        "comment on column response_items.type is 'The item type (message, function_call, reasoning, ...), as sent.'",
        "comment on column response_items.text is 'A message''s text (its output_text parts joined).'",
        "comment on column response_items.added_at is 'When runtap saw the item begin (its own clock).'",
        "comment on column response_items.done_at is 'When runtap saw the item complete.'",
        EVENTS_VIEW_RESPONSES,
        *_events_view_comments("A Responses event's sequence_number, from its data."),
    )


@migration
def m007_response_links(con: duckdb.DuckDBPyConnection) -> None:
    # Issue #14: each hop of a turn says how runtap linked it (protocol-responses.md section 11).
    _run(
        con,
        "alter table responses add column link_kind varchar",
        "comment on column responses.link_kind is"
        " 'How the response joined its turn: previous_response_id, call_id (tool results for calls it saw asked"
        " for), conversation (for calls it did not see, the conversation''s turn waiting for them), or none (it"
        " began the turn).'",
    )


EVENTS_VIEW_M008 = _responses_events_view(
    EVENTS_VIEW.split(" as\n", 1)[1]
    .replace("select request_id, seq, event, data, received_at, run_id, raw from event_rows",
             "select request_id, seq, event, data, received_at, run_id, raw, sequence_number as stored_sequence_number"
             " from event_rows")
    .replace("       null::blob\n", "       null::blob, null::bigint\n"),
    "stored_sequence_number")
"""m006's events, with the sequence number an `event_rows` row keeps of its own when its data is
blanked (record_content = false: an id, not content)."""


@migration
def m008_event_sequence_numbers(con: duckdb.DuckDBPyConnection) -> None:
    # Issue #14: under record_content = false an event's data is NULL, and with it the sequence
    # number the view read from it; ids are still recorded (contract section 6), so the row keeps it.
    _run(
        con,
        "alter table event_rows add column sequence_number bigint",
        "comment on column event_rows.sequence_number is"
        " 'A Responses event''s sequence_number, kept here only when its data is not (record_content = false).'",
        EVENTS_VIEW_M008,
        *_events_view_comments("A Responses event's sequence_number."),
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the writer needs to know about one table, read from a migrated database."""

    name: str
    columns: tuple[str, ...]
    """Column names in table order."""
    types: Mapping[str, str]
    """DuckDB type name per column, e.g. ``TIMESTAMP WITH TIME ZONE``."""
    key: tuple[str, ...]
    """The merge key of an upsert (its primary key), or the dedup key of an append (not a constraint)."""
    mode: Literal["append", "upsert"]
    column_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_set", frozenset(self.columns))

    def problem(self, row: object) -> str | None:
        """Why ``row`` can never be written to this table, or None if it can."""
        if not isinstance(row, dict):
            return f"{self.name}: row is {type(row).__name__}, not dict"
        unknown = row.keys() - self.column_set
        if unknown:
            return f"{self.name}: unknown columns {sorted(map(str, unknown))}"
        missing = [c for c in self.key if row.get(c) is None]
        if missing:
            return f"{self.name}: key columns {missing} missing or NULL"
        return None

    def is_timestamp(self, column: str) -> bool:
        return self.types.get(column) in _TIMESTAMP_TYPES


def table_specs(con: duckdb.DuckDBPyConnection) -> dict[str, TableSpec]:
    """The writable public tables of a migrated database, in creation order."""
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in con.execute(
        "select c.table_name, c.column_name, c.data_type from duckdb_columns() c"
        " join duckdb_tables() t on t.table_oid = c.table_oid"
        " where c.schema_name = 'main' and not c.internal and c.table_name not like '\\_%' escape '\\'"
        " order by t.table_oid, c.column_index"
    ).fetchall():
        columns.setdefault(table, []).append((column, data_type))
    keys = dict(
        con.execute(
            "select table_name, constraint_column_names from duckdb_constraints()"
            " where schema_name = 'main' and constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    )
    specs = {name: _spec(name, cols, tuple(keys.get(name, ()))) for name, cols in columns.items()}
    for alias, table in TABLE_ALIASES.items():
        if alias not in specs and table in specs:
            specs[alias] = specs[table]  # the same spec: its rows are written to `table`
    return specs


def _spec(name: str, cols: list[tuple[str, str]], key: tuple[str, ...]) -> TableSpec:
    mode: Literal["append", "upsert"] = "append" if name in APPEND_TABLES else "upsert"
    if mode == "append":
        key = key or APPEND_TABLES[name]
    if mode == "upsert" and not key:
        # A migration author's mistake, caught at import: an upsert needs a key to merge on.
        raise ValueError(f"table {name!r} has no primary key and is not in APPEND_TABLES")
    return TableSpec(name, tuple(c for c, _ in cols), dict(cols), key, mode)


def fresh_database() -> duckdb.DuckDBPyConnection:
    """An in-memory database at the latest schema (for specs, docs and tests)."""
    con = duckdb.connect(":memory:")
    migrate(con)
    return con


def schema_markdown(con: duckdb.DuckDBPyConnection | None = None) -> str:
    """Markdown for every public table and view: columns, types, keys, comments."""
    own = con is None
    db = fresh_database() if con is None else con
    try:
        tables = sorted(_public(db, "duckdb_tables"), key=lambda t: _DOC_ORDER.get(t[0], len(_DOC_ORDER)))
        parts = [_table_markdown(db, name, comment) for name, comment in tables]
        parts += [_view_markdown(db, name, comment) for name, comment in _public(db, "duckdb_views")]
    finally:
        if own:
            db.close()
    return "\n".join(parts)


# The order a reader meets the tables in (a rebuilt table, like m004's events, has a newer oid).
_DOC_ORDER = {name: i for i, name in enumerate(
    ("requests", "event_rows", "response_streams", "runs", "run_steps", "tool_calls", "messages", "responses",
     "response_items"))}


def _public(con: duckdb.DuckDBPyConnection, catalog: str) -> list[tuple[str, str | None]]:
    oid = "table_oid" if catalog == "duckdb_tables" else "view_oid"
    name = "table_name" if catalog == "duckdb_tables" else "view_name"
    rows = con.execute(
        f"select {name}, comment from {catalog}() where schema_name = 'main' and not internal"
        f" and {name} not like '\\_%' escape '\\' order by {oid}"
    ).fetchall()
    return [(str(n), c) for n, c in rows]


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str, str | None]]:
    return con.execute(
        "select column_name, data_type, comment from duckdb_columns()"
        " where schema_name = 'main' and table_name = ? order by column_index",
        [table],
    ).fetchall()


def _table_markdown(con: duckdb.DuckDBPyConnection, name: str, comment: str | None) -> str:
    spec = table_specs(con)[name]
    lines = [f"### `{name}`", ""]
    if comment:
        lines += [comment, ""]
    keys = ", ".join(f"`{k}`" for k in spec.key) or "none"
    how = "primary key" if spec.mode == "upsert" else "not a constraint: the recorder never repeats one"
    lines += [f"Written by **{spec.mode}**; key: {keys} ({how}).", ""]
    lines += ["| column | type | key | description |", "|---|---|---|---|"]
    for column, data_type, col_comment in _columns(con, name):
        key = ("PK" if spec.mode == "upsert" else "key") if column in spec.key else ""
        lines.append(f"| `{column}` | {_type(data_type)} | {key} | {_cell(col_comment)} |")
    return "\n".join(lines) + "\n"


def _view_markdown(con: duckdb.DuckDBPyConnection, name: str, comment: str | None) -> str:
    lines = [f"### `{name}` (view)", ""]
    if comment:
        lines += [comment, ""]
    lines += ["| column | type | description |", "|---|---|---|"]
    for column, data_type, col_comment in _columns(con, name):
        lines.append(f"| `{column}` | {_type(data_type)} | {_cell(col_comment)} |")
    return "\n".join(lines) + "\n"


def _type(data_type: str) -> str:
    # DuckDB reports the long spelling; contract.md and the DDL say TIMESTAMPTZ.
    return "TIMESTAMPTZ" if data_type == "TIMESTAMP WITH TIME ZONE" else data_type


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


@functools.cache
def latest_tables() -> dict[str, TableSpec]:
    """Specs of the latest schema, from a freshly migrated in-memory database, built on first use.

    Not at import: an in-memory DuckDB costs the process about 35 MB of RSS that it keeps, and the
    proxy never needs it (its writer reads the specs of its own database).
    """
    con = fresh_database()
    try:
        return table_specs(con)
    finally:
        con.close()


def __getattr__(name: str) -> object:
    # `TABLES` stays importable (tests, scripts) without being built at import (PEP 562).
    if name == "TABLES":
        return latest_tables()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.record.migrations")
    parser.add_argument("--doc", action="store_true", help="print the schema as Markdown")
    args = parser.parse_args(argv)
    if args.doc:
        print(schema_markdown(), end="")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
