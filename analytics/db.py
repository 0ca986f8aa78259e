"""Where the read commands get their rows: the recording file, or the running proxy that holds it.

DuckDB lets one process write a file, and while it does no other process may open it, not even
read-only (duckdb.org/docs/current/connect/concurrency, architecture.md §8.5). So
:func:`open_recording` opens the file read-only when it can, and otherwise asks the proxy that
holds it, over ``POST /admin/sql`` on its admin listener (contract §7). Both answer with the same
:class:`Result`, values encoded the same way (:func:`jsonable`), so a command prints the same
bytes whichever path answered: the user need not know which.

What may run is decided here, for both paths (proxy/admin/sql.py calls :func:`check_read_only`
too): one statement, of a read type, that calls no function that reads files or has side effects.
Behind that check the connection has file access and Python replacement scans disabled, and the
file is read-only (the CLI) or the statement runs in a read-only transaction (the proxy), so a
statement the check misses still cannot write or read a file.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import duckdb

ENV_ADMIN_TOKEN = "RUNTAP_ADMIN_TOKEN"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9464"

READ_STATEMENTS = "SELECT, WITH, FROM, VALUES, TABLE, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN"
# Functions that read files (and any read_* or *_scan); enable_external_access = false backs this up.
FILE_FUNCTIONS = frozenset({
    "glob", "sniff_csv", "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
    "parquet_full_metadata", "parquet_page_index", "parquet_bloom_probe", "iceberg_metadata", "iceberg_snapshots",
    "st_read", "sqlite_attach",
})
# Functions that do more than read: change the database or the instance (a read-only transaction
# does not stop a checkpoint or the log switches), or run SQL text the check cannot see.
EFFECT_FUNCTIONS = frozenset({
    "checkpoint", "force_checkpoint", "enable_logging", "disable_logging", "truncate_duckdb_logs", "write_log",
    "enable_profiling", "disable_profiling", "add_grammar_extension", "remove_grammar_extension",
    "json_execute_serialized_sql", "python_map_function", "query", "query_table",
})
# The connections the checked statements run on (the CLI's here, the proxy's in store/writer.py).
SAFE_CONFIG = {"enable_external_access": False, "python_enable_replacements": False}
_EXPLAIN = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+)?", re.I)
_FILE_LIKE = re.compile(r"[/\\.:]")


class RecordingError(Exception):
    """The recording cannot be reached: no file, or the file is held and the proxy does not answer."""


class QueryError(Exception):
    """The statement failed, or was refused; ``code`` is the OpenAI-style error code."""

    def __init__(self, message: str, code: str = "invalid_sql") -> None:
        super().__init__(message)
        self.code = code


class SqlRefused(QueryError):
    """The statement is not a read of the recording."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "read_only")


@dataclass(frozen=True, slots=True)
class Result:
    columns: list[str]
    types: list[str]
    """DuckDB type names, e.g. ``TIMESTAMP WITH TIME ZONE``: the renderer formats by them."""
    rows: list[list[Any]]
    """JSON values (see :func:`jsonable`)."""
    truncated: bool = False
    """The proxy stopped at its row cap (admin_sql_max_rows)."""

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`SqlRefused` unless ``sql`` is one read statement that touches no file."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    if len(statements) != 1:
        raise SqlRefused(f"give exactly one statement, not {len(statements)}")
    try:
        query, kind = statements[0].query, statements[0].type.name
    except ValueError as exc:  # a statement type this duckdb build cannot name (e.g. UPDATE EXTENSIONS)
        raise SqlRefused(f"only read statements run here ({READ_STATEMENTS})") from exc
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", query, count=1)
        if inner == query:
            raise SqlRefused("cannot read this EXPLAIN; write EXPLAIN [ANALYZE] SELECT ...")
        check_read_only(con, inner)
        return
    if kind != "SELECT":
        raise SqlRefused(f"{kind} statements are refused: only read statements run here ({READ_STATEMENTS})")
    for name, why in _refused_names(con, query):
        raise SqlRefused(f"{name} {why} and is refused: runtap SQL only reads the recording")


def _refused_names(con: duckdb.DuckDBPyConnection, query: str) -> Iterator[tuple[str, str]]:
    """Names in the statement's syntax tree that would read a file or do more than read."""
    (tree,) = con.execute("select json_serialize_sql(?)", [query]).fetchone() or ("{}",)
    stack: list[Any] = [json.loads(tree)]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            name = node.get("function_name")
            if isinstance(name, str) and (why := _refusal(name.lower())):
                yield name, why
            table = node.get("table_name") if node.get("type") == "BASE_TABLE" else None
            if isinstance(table, str) and _FILE_LIKE.search(table):
                yield f"'{table}'", "reads files"
            stack.extend(node.values())


def _refusal(function: str) -> str | None:
    if function in FILE_FUNCTIONS or function.startswith("read_") or function.endswith("_scan"):
        return "reads files"
    if function in EFFECT_FUNCTIONS or "external_resource" in function:
        return "does more than read"
    return None


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: timestamps ISO 8601, BLOBs base64, intervals seconds, decimals numbers."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)  # UUID, and anything newer


def result_of(cursor: duckdb.DuckDBPyConnection, rows: Sequence[Sequence[Any]], truncated: bool = False) -> Result:
    """The :class:`Result` of ``cursor``'s last statement, given the rows fetched from it."""
    description = cursor.description or []
    return Result([d[0] for d in description], [str(d[1]) for d in description],
                  [[jsonable(v) for v in row] for row in rows], truncated)


class Recording(Protocol):
    """The recording, wherever it is. ``query`` raises :class:`QueryError` or :class:`RecordingError`."""

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Result: ...
    def close(self) -> None: ...


class FileRecording:
    """The DuckDB file, opened read-only, without file access through SQL."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._con = duckdb.connect(path, read_only=True, config=dict(SAFE_CONFIG))
        self._con.execute("set TimeZone = 'UTC'")

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        check_read_only(self._con, sql)
        try:
            cursor = self._con.execute(sql, list(params or []))
            return result_of(cursor, cursor.fetchall())
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc

    def close(self) -> None:
        self._con.close()


class AdminRecording:
    """The recording held by a running proxy, read through its ``POST /admin/sql``."""

    def __init__(self, url: str, token: str, timeout_s: float = 120.0) -> None:
        self.url, self.where = url.rstrip("/") + "/admin/sql", url
        self._token, self._timeout_s = token, timeout_s
        # The admin listener is local: environment proxies (http_proxy) must not intercept it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def query(self, sql: str, params: Sequence[Any] | None = None) -> Result:
        body = json.dumps({"sql": sql, "params": list(params or [])}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RecordingError(f"the proxy's admin listener at {self.where} does not answer: {reason}") from exc
        return Result(answer["columns"], answer.get("types") or [""] * len(answer["columns"]), answer["rows"],
                      bool(answer.get("truncated")))

    def get_json(self, path: str) -> Any:
        """``GET`` an admin endpoint (e.g. ``/admin/budgets``) with the token; its JSON answer."""
        request = urllib.request.Request(self.where.rstrip("/") + path,
                                         headers={"Authorization": f"Bearer {self._token}"})
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RecordingError(f"the proxy's admin listener at {self.where} does not answer: {reason}") from exc

    def close(self) -> None:
        pass


def _http_error(exc: urllib.error.HTTPError) -> Exception:
    try:
        error = json.load(exc)["error"]
        message, code = str(error["message"]), str(error.get("code") or "")
    except (ValueError, KeyError, TypeError):
        message, code = f"HTTP {exc.code} {exc.reason}", ""
    if exc.code == 401:
        return RecordingError(f"the proxy refused the admin token ({message}); set {ENV_ADMIN_TOKEN}")
    if exc.code >= 500 or exc.code == 404:
        return RecordingError(f"the proxy's admin listener answered {exc.code}: {message}")
    return SqlRefused(message) if code == "read_only" else QueryError(message, code or "invalid_sql")


def open_recording(db: str, admin_url: str = DEFAULT_ADMIN_URL, env: Mapping[str, str] | None = None) -> Recording:
    """The file read-only when it can be opened; else the proxy holding it, through its admin listener."""
    if not Path(db).exists():
        raise RecordingError(f"no recording at {db} (runtap serve --db {db} writes one)")
    try:
        return FileRecording(db)
    except duckdb.Error as exc:
        if not is_held(exc):
            raise RecordingError(f"cannot open {db}: {exc}") from exc
    token = admin_token(db, os.environ if env is None else env)
    if not token:
        raise RecordingError(f"{db} is held by a running proxy; to read it through the proxy set {ENV_ADMIN_TOKEN}"
                             f" (the proxy writes its token to {db}.admin-token when the variable is unset)")
    return AdminRecording(admin_url, token)


def is_held(exc: duckdb.Error) -> bool:
    """Another process writes the file (its lock), or this process holds it with another configuration."""
    text = str(exc).lower()
    return "lock" in text or "different configuration" in text


def admin_token(db: str, env: Mapping[str, str]) -> str | None:
    """$RUNTAP_ADMIN_TOKEN, else the token the proxy wrote beside the database (proxy/admin/listener.py)."""
    if env.get(ENV_ADMIN_TOKEN):
        return env[ENV_ADMIN_TOKEN]
    try:
        return Path(db + ".admin-token").read_text().strip() or None
    except OSError:
        return None
