"""The budgets in the recording: charges loaded at start, limits written at start and on SIGHUP.

Charges are written by the recorder's writer thread (`Ledger` submits rows); this module only
reads them back, once, before traffic. Limits are configuration, like prices: `set_limits` makes
the `budget_limits` table exactly the config's, in one transaction on its own cursor (the writer
never touches that table), so `runtap budgets` on a stopped proxy's file knows what they were.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import duckdb

from .settings import LIMITS, LONGEST_WINDOW_S, OTHER, WINDOWS, BudgetsSettings

DEFAULT_KEY = "*"
"""budget_limits.key_id of the default budget (keys without an entry, when unknown_keys = "default")."""


def limit_rows(settings: BudgetsSettings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    budgets = [(k.key_id, k.alias, k) for k in settings.keys]
    if settings.unknown_keys == "default":
        budgets.append((DEFAULT_KEY, OTHER, settings.default))
    for position, (key_id, alias, budget) in enumerate(budgets):
        for name, limit in budget.limits().items():
            window, unit = LIMITS[name]
            rows.append({"key_id": key_id, "budget": name, "key_alias": alias, "unit": unit,
                         "window_s": WINDOWS[window], "limit_value": float(limit), "position": position,
                         "clamp": budget.clamp, "cancel_on_exhaustion": budget.cancel_on_exhaustion})
    return rows


def set_limits(con: duckdb.DuckDBPyConnection, settings: BudgetsSettings) -> None:
    con.execute("begin transaction")
    try:
        con.execute("delete from budget_limits")
        rows = limit_rows(settings)
        if rows:
            con.executemany(
                "insert into budget_limits by name select $key_id as key_id, $budget as budget, $key_alias as"
                " key_alias, $unit as unit, $window_s as window_s, $limit_value as limit_value, $position as"
                " position, $clamp as clamp, $cancel_on_exhaustion as cancel_on_exhaustion", rows)
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise


def load_charges(con: duckdb.DuckDBPyConnection, keys: Collection[str] | None = None, *,
                 open_ones: bool = True) -> list[dict[str, Any]]:
    """Charges a restart must know: every open reservation (unless not `open_ones`), and those inside
    the longest window of `keys` (None: of every key). Keys without a budget need no history in
    memory: loading 30 days of everybody's runs would cost memory and start-up time for nothing."""
    where = "reserved_at > now() - to_seconds(?)"
    params: list[Any] = [LONGEST_WINDOW_S]
    if keys is not None:
        where += " and list_contains(?::varchar[], key_id)"
        params.append(sorted(keys))
    if open_ones:  # and rows whose reserve row was lost: Ledger.load dates them, or skips them, logged
        where = f"state = 'reserved' or reserved_at is null or ({where})"
    cursor = con.execute(f"select * from budget_charges where {where} order by reserved_at, charge_id", params)
    columns = [d[0] for d in cursor.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
