"""``POST /admin/sql``: read-only SQL over the live recording, bounded in rows and time (contract §7).

While the proxy runs it is the only process that may open the DuckDB file, so this is how
``runtap sql`` and the other read commands reach the recording (analytics/db.py falls back to it).

``{"sql": "...", "params": [...]}`` → ``{"columns": [...], "types": [...], "rows": [[...]],
"truncated": false}``. ``params`` (optional) binds ``?`` placeholders. Values are JSON as
``analytics.db.jsonable`` makes them, so both read paths print the same thing.

How it protects the proxy:

- Only one read statement runs (``analytics.db.check_read_only``: SELECT-style statements and
  EXPLAIN of them, no file-reading functions); anything else is a 400 ``read_only`` and runs not
  at all. Behind the check, the statement runs in a read-only transaction on a connection with
  file access disabled (store/writer.py), so a statement the check missed still cannot write.
- It runs on its own cursor in a worker thread (``asyncio.to_thread``): never on the event loop,
  and never on the writer's thread (``Writer.run_in_thread`` would queue it behind, and stall,
  the recorder). DuckDB's MVCC lets it read a snapshot while the writer commits.
- A timer interrupts it after ``admin_sql_timeout_s`` (400 ``statement_timeout``); at most
  ``admin_sql_max_rows`` rows are fetched (then ``truncated: true``); at most two run at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
from aiohttp import web

from analytics.db import QueryError, Result, check_read_only, result_of

from ..errors import openai_error
from ..record.writer import StoreError

if TYPE_CHECKING:
    from ..app import Parts

MAX_CONCURRENT = 2
"""Admin queries share DuckDB's threads and the machine's cores with the writer; two at a time keeps
the recorder moving."""


class StatementTimeout(QueryError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the statement ran longer than {seconds:g} s (admin_sql_timeout_s) and was interrupted",
                         "statement_timeout")


def run_bounded(cursor: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any],
                timeout_s: float, max_rows: int) -> Result:
    """Check and run one read statement on ``cursor`` (blocking): at most ``max_rows`` rows, ``timeout_s``."""
    cursor.execute("set TimeZone = 'UTC'")
    check_read_only(cursor, sql)
    cursor.execute("begin transaction read only")
    timer = threading.Timer(timeout_s, cursor.interrupt)
    timer.daemon = True
    timer.start()
    try:
        cursor.execute(sql, list(params))
        rows = cursor.fetchmany(max_rows + 1)  # the result streams: rows past the cap are never computed
    except duckdb.InterruptException as exc:
        raise StatementTimeout(timeout_s) from exc
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    finally:
        timer.cancel()
    return result_of(cursor, rows[:max_rows], truncated=len(rows) > max_rows)


def _answer(parts: Parts, sql: str, params: Sequence[Any]) -> bytes:
    """The JSON answer, built in the worker thread too: 10,000 rows take milliseconds to encode."""
    server = parts.settings.server
    cursor = parts.writer.cursor()
    try:
        result = run_bounded(cursor, sql, params, server.admin_sql_timeout_s, server.admin_sql_max_rows)
    finally:
        cursor.close()
    return json.dumps({"columns": result.columns, "types": result.types, "rows": result.rows,
                       "truncated": result.truncated}).encode()


def _parse(body: bytes) -> tuple[str, list[Any]]:
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise QueryError(f"the body is not JSON: {exc}", "invalid_json") from exc
    sql = request.get("sql") if isinstance(request, dict) else None
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError('give the statement as {"sql": "SELECT ..."}', "missing_required_parameter")
    params = request.get("params") or []
    if not isinstance(params, list):
        raise QueryError('"params" must be a list of values for the ? placeholders', "invalid_type")
    return sql, params


def add_sql_routes(app: web.Application, parts: Parts) -> None:
    """Add ``POST /admin/sql`` to the admin app (whose middleware checks the Bearer token)."""
    gate = asyncio.Semaphore(MAX_CONCURRENT)

    async def sql(request: web.Request) -> web.Response:
        try:
            statement, params = _parse(await request.read())
            async with gate:
                answer = await asyncio.to_thread(_answer, parts, statement, params)
        except QueryError as exc:
            return openai_error(400, str(exc), "invalid_request_error", exc.code)
        except StoreError as exc:
            return openai_error(503, f"the recording is not open: {exc}", "server_error", "recorder_unavailable")
        return web.Response(body=answer, content_type="application/json")

    app.router.add_post("/admin/sql", sql)
