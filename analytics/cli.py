"""The read commands: ``runtap runs|run|usage|sql|export|budgets`` (contract §2), also ``python -m analytics``.

Each opens the recording through :func:`analytics.db.open_recording` (the file, or the running
proxy's admin listener when the proxy holds it), asks one question from ``queries`` and prints
it with ``render``. Exit codes: 0 done, 1 the query failed or was refused, 2 bad usage, 3 the
recording cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from . import queries
from .db import DEFAULT_ADMIN_URL, QueryError, Recording, RecordingError, Result, open_recording
from .render import FORMATS, as_timeline, render

EXIT_QUERY, EXIT_USAGE, EXIT_RECORDING = 1, 2, 3
ENV_DB = "RUNTAP_DB"
ENV_ADMIN_LISTEN = "RUNTAP_ADMIN_LISTEN"
STATUSES = ("queued", "in_progress", "requires_action", "cancelling", "cancelled", "failed", "completed",
            "incomplete", "expired")


def _runs(rec: Recording, args: argparse.Namespace) -> Result:
    return queries.runs(rec, status=args.status, key=args.key, since=args.since, limit=args.limit)


def _run(rec: Recording, args: argparse.Namespace) -> Result:
    result = queries.timeline(rec, args.run_id)
    if not result.rows:
        raise QueryError(f"no run {args.run_id} in the recording", "not_found")
    return result


def _usage(rec: Recording, args: argparse.Namespace) -> Result:
    return queries.usage(rec, by=args.by, since=args.since)


def _sql(rec: Recording, args: argparse.Namespace) -> Result:
    return rec.query(args.statement)


def _export(rec: Recording, args: argparse.Namespace) -> Result:
    return queries.export_parquet(rec, Path(args.dir))


def _budgets(rec: Recording, args: argparse.Namespace) -> Result:
    return queries.budgets(rec)


def _since(text: str) -> datetime:
    try:
        return queries.parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _statuses(text: str) -> list[str]:
    values = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(values) - set(STATUSES))
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown status {', '.join(unknown) or text!r}; one of {', '.join(STATUSES)}")
    return values


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtap", description="Read the recording: runs, usage, SQL, export.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get(ENV_DB) or "./runtap.duckdb",
                        help="the DuckDB recording (default $RUNTAP_DB, else ./runtap.duckdb)")
    listen = os.environ.get(ENV_ADMIN_LISTEN)
    common.add_argument("--admin", default=f"http://{listen}" if listen else DEFAULT_ADMIN_URL, metavar="URL",
                        help="the running proxy's admin listener, used when it holds the database "
                             f"(default {DEFAULT_ADMIN_URL}; token from $RUNTAP_ADMIN_TOKEN or <db>.admin-token)")
    formats = argparse.ArgumentParser(add_help=False)
    formats.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: Callable[[Recording, argparse.Namespace], Result], help_: str,
                with_format: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common, *([formats] if with_format else [])])
        p.set_defaults(run=run)
        return p

    runs = command("runs", _runs, "recorded runs, newest first")
    runs.add_argument("--status", type=_statuses, default=[], help="only these statuses (comma-separated)")
    runs.add_argument("--key", help="only runs of this key_id (sha256:..., see `runtap key-id`)")
    runs.add_argument("--since", type=_since, help="created since: 30m, 24h, 7d, today, yesterday, 2026-11-16, ...")
    runs.add_argument("--limit", type=_positive, default=20, help="at most N runs (default 20)")
    run = command("run", _run, "one run as a timeline: steps, tool calls, messages, tokens, latencies")
    run.add_argument("run_id", metavar="RUN_ID")
    usage = command("usage", _usage, "runs, tokens and cost per day, key, model or assistant")
    usage.add_argument("--by", choices=tuple(queries.USAGE_BY), default="day", help="grouping (default day)")
    usage.add_argument("--since", type=_since, help="only runs created since (as for runs)")
    sql = command("sql", _sql, "one read-only SQL statement over the recording (works while the proxy runs)")
    sql.add_argument("statement", metavar="SQL")
    export = command("export", _export, "every table as a Parquet file in DIR", with_format=False)
    export.add_argument("--format", choices=("parquet",), default="parquet", help="file format (parquet)")
    export.add_argument("dir", metavar="DIR")
    command("budgets", _budgets, "each budget limit: limit, used, reserved, remaining, when the window next frees")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        rec = open_recording(args.db, args.admin)
    except RecordingError as exc:
        print(f"runtap {args.command}: {exc}", file=sys.stderr)
        return EXIT_RECORDING
    try:
        result = args.run(rec, args)
    except RecordingError as exc:
        print(f"runtap {args.command}: {exc}", file=sys.stderr)
        return EXIT_RECORDING
    except QueryError as exc:
        print(f"runtap {args.command}: {exc} ({exc.code})", file=sys.stderr)
        return EXIT_QUERY
    finally:
        rec.close()
    fmt = getattr(args, "format", "table")
    text = as_timeline(result) if args.command == "run" and fmt == "table" else render(result, fmt)
    sys.stdout.write(text)
    if result.truncated:
        print(f"runtap {args.command}: only the first {len(result.rows)} rows: the proxy caps /admin/sql answers"
              " (admin_sql_max_rows)", file=sys.stderr)
    return 0
