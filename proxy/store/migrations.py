"""The recording's schema: append-only named migrations, and the table specs the writer obeys.

The tables and views created here are runtap's public SQL contract (contract.md §6), so the
schema only grows: never edit a shipped migration, append a new one (llm's ``migrations.py``).
Each migration runs in an explicit transaction because DuckDB 2.0 runs the statements of a script
in auto-commit mode: without ``BEGIN``, a failing statement would leave the earlier ones applied.

Everything the writer needs to know about a table (its columns in order, its key, whether rows are
appended or merged) is read back from a migrated database by :func:`table_specs`, so the DDL below
is the only copy of the column lists. ``python -m proxy.store.migrations --doc`` prints the schema
as Markdown for the README.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import duckdb

MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = []
migration = MIGRATIONS.append

# Events are facts that arrive once and are never revised, so they are inserted, and a repeated
# (request_id, seq) is ignored: that is what makes replaying a spill idempotent. Every other table
# describes an object whose fields become known piecemeal across events and exchanges: upserted.
APPEND_TABLES: frozenset[str] = frozenset({"events"})

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


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the writer needs to know about one table, read from a migrated database."""

    name: str
    columns: tuple[str, ...]
    """Column names in table order."""
    types: Mapping[str, str]
    """DuckDB type name per column, e.g. ``TIMESTAMP WITH TIME ZONE``."""
    key: tuple[str, ...]
    """Primary key columns: the merge key of an upsert, the dedup key of an append."""
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
    return {name: _spec(name, cols, tuple(keys.get(name, ()))) for name, cols in columns.items()}


def _spec(name: str, cols: list[tuple[str, str]], key: tuple[str, ...]) -> TableSpec:
    mode: Literal["append", "upsert"] = "append" if name in APPEND_TABLES else "upsert"
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
        parts = [_table_markdown(db, name, comment) for name, comment in _public(db, "duckdb_tables")]
        parts += [_view_markdown(db, name, comment) for name, comment in _public(db, "duckdb_views")]
    finally:
        if own:
            db.close()
    return "\n".join(parts)


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
    lines += [f"Written by **{spec.mode}**; key: {', '.join(f'`{k}`' for k in spec.key) or 'none'}.", ""]
    lines += ["| column | type | key | description |", "|---|---|---|---|"]
    for column, data_type, col_comment in _columns(con, name):
        key = "PK" if column in spec.key else ""
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


def _load_tables() -> dict[str, TableSpec]:
    con = fresh_database()
    try:
        return table_specs(con)
    finally:
        con.close()


TABLES: dict[str, TableSpec] = _load_tables()
"""Specs of the latest schema, derived from a freshly migrated in-memory database at import."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.store.migrations")
    parser.add_argument("--doc", action="store_true", help="print the schema as Markdown")
    args = parser.parse_args(argv)
    if args.doc:
        print(schema_markdown(), end="")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
