"""Printing a :class:`~analytics.db.Result`: an aligned table for people, JSON or CSV for programs.

The table shortens what would not fit a terminal (timestamps to the second, long text cut with
an ellipsis, floats to six significant digits); ``--format json`` and ``csv`` never shorten
anything. JSON is one array of objects keyed by column name, values as ``db.jsonable`` made them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from datetime import UTC, datetime
from typing import Any

from .db import Result

FORMATS = ("table", "json", "csv")
MAX_CELL = 100
MAX_DETAIL = 600
_TIMESTAMP_TYPES = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMP"})


def render(result: Result, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(result.records(), ensure_ascii=False) + "\n"
    if fmt == "csv":
        return as_csv(result)
    return as_table(result)


def as_csv(result: Result) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return out.getvalue()


def as_table(result: Result) -> str:
    types = result.types or [""] * len(result.columns)
    cells = [[cell(v, t) for v, t in zip(row, types, strict=True)] for row in result.rows]
    numeric = [_is_numeric([row[i] for row in result.rows]) for i in range(len(result.columns))]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(result.columns)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(padded).rstrip()

    lines = [line(list(result.columns)), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in cells]
    count = len(result.rows)
    lines.append(f"({count} row{'' if count == 1 else 's'}{', truncated' if result.truncated else ''})")
    return "\n".join(lines) + "\n"


def cell(value: Any, type_: str = "") -> str:
    """One value as a table cell: short, on one line."""
    if value is None:
        return ""
    if type_ in _TIMESTAMP_TYPES and isinstance(value, str):
        return timestamp(value)
    if isinstance(value, float):
        return number(value)
    return _shorten(_plain(value), MAX_CELL)


def timestamp(iso: str) -> str:
    """``2026-11-16T08:02:00.123+00:00`` → ``2026-11-16 08:02:00`` (UTC)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def number(value: float) -> str:
    """Six significant digits, no exponent for everyday magnitudes, no trailing zeros."""
    magnitude = abs(value)
    if value == 0 or not 1e-9 <= magnitude < 1e15:
        return f"{value:.6g}"
    if magnitude >= 1:
        text = f"{value:.{max(0, 6 - len(str(int(magnitude))))}f}"
    else:
        text = f"{value:.{5 - math.floor(math.log10(magnitude))}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def duration(ms: float | None) -> str:
    if ms is None:
        return "?"
    if abs(ms) < 1000:
        return f"{ms:.0f} ms"
    if abs(ms) < 60_000:
        return f"{number(round(ms / 1000, 1))} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes} min {seconds} s"


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _shorten(text: str, limit: int) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


# -- `runtap run RUN_ID` --------------------------------------------------------------------------


def as_timeline(result: Result) -> str:
    """The rows of ``queries.TIMELINE`` as a timeline a person can read."""
    out: list[str] = []
    for item in result.records():
        out += _TIMELINE_LINES[item["kind"]](item)
    return "\n".join(out) + "\n"


def _tokens(item: dict[str, Any]) -> str:
    if item["total_tokens"] is None:
        return "no usage"
    return f"{item['total_tokens']} tokens ({item['prompt_tokens']} prompt + {item['completion_tokens']} completion)"


def _run_lines(item: dict[str, Any]) -> list[str]:
    cost = item.get("cost_usd")
    priced = f"${number(cost)}" if cost is not None else ("unpriced model" if item["total_tokens"] else "no cost")
    client = f" · client tool time {duration(item['client_ms'])}" if item["client_ms"] is not None else ""
    lines = [
        f"run {item['id']}  {item['status']}",
        f"  {_who(item['name'])} · model {item['detail']} · created {timestamp(item['started_at'])} UTC",
        f"  duration {duration(item['duration_ms'])}{client} · {_tokens(item)} · {priced}",
    ]
    if item["error"]:
        lines.append(f"  {item['error']}")
    return [*lines, ""]


def _who(name: str | None) -> str:
    """`assistant asst_...` for an Assistants run; a Responses or Chat turn says what it is."""
    return name if name is not None and name.endswith(" turn") else f"assistant {name}"


def _step_lines(item: dict[str, Any]) -> list[str]:
    head = (f"  +{duration(item['offset_ms'])}  step {item['step']}  {item['name']}  {item['status']}"
            f"  {duration(item['duration_ms'])}  {_tokens(item)}  {item['id']}")
    return [head] + ([f"      {item['error']}"] if item["error"] else [])


def _call_lines(item: dict[str, Any]) -> list[str]:
    client = f"  client tool time {duration(item['client_ms'])}" if item["client_ms"] is not None else ""
    lines = [f"      tool call {item['name']}  {item['status'] or 'builtin'}{client}  {item['id']}"]
    lines += _detail("arguments", item["detail"]) + _detail("output", item["output"])
    return lines


def _message_lines(item: dict[str, Any]) -> list[str]:
    lines = [f"      message {item['name']}  {item['status']}  {item['id']}"]
    if item["error"]:
        lines.append(f"        {item['error']}")
    return lines + _detail("text", item["detail"])


def _detail(label: str, text: str | None) -> list[str]:
    if text is None:
        return []
    shown = text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + f"… ({len(text) - MAX_DETAIL} more characters)"
    wrapped = [w for line in shown.splitlines() or [""] for w in textwrap.wrap(line, 96) or [""]]
    return [f"        {label if i == 0 else '':<9} {w}" for i, w in enumerate(wrapped)]


def _response_lines(item: dict[str, Any]) -> list[str]:
    link = f"  joined by {item['detail']}" if item["detail"] not in (None, "none") else ""
    head = (f"  +{duration(item['offset_ms'])}  response {item['step']}  {item['name']}  {item['status']}"
            f"  {duration(item['duration_ms'])}  {_tokens(item)}  {item['id']}{link}")
    return [head] + ([f"      {item['error']}"] if item["error"] else [])


def _item_lines(item: dict[str, Any]) -> list[str]:
    return [f"      {item['name']}  {item['status'] or ''}  {item['id']}".rstrip(), *_detail("text", item["detail"])]


_TIMELINE_LINES = {"run": _run_lines, "step": _step_lines, "tool_call": _call_lines, "message": _message_lines,
                   "response": _response_lines, "item": _item_lines}
