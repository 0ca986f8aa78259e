"""What the budgets look like now: `GET /admin/budgets`, `runtap_budget_remaining_tokens`, the ticker.

One row per limit of each budget: the configured keys in config order, then every key on the
default budget that holds charges (alias "other"). The same columns, computed the same way, are
what `runtap budgets` prints from a cold file (analytics/queries.py, `budgets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .gate import Budgets
from .settings import LIMITS, OTHER, WINDOWS, BudgetLimits

log = logging.getLogger("runtap.budgets")
COLUMNS = ("key_alias", "key_id", "budget", "unit", "window_s", "limit", "used", "reserved", "remaining",
           "resets_at")
TICK_S = 1.0


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _budgeted(budgets: Budgets) -> Iterator[tuple[str, str, BudgetLimits]]:
    """(key_id, alias, budget) for every key a report shows."""
    for key in budgets.settings.keys:
        yield key.key_id, key.alias, key
    if budgets.settings.unknown_keys == "default" and budgets.settings.default.limits():
        for key_id in sorted(budgets.ledger.known_keys()):
            if key_id not in budgets.by_key and budgets.ledger.window(key_id, "30d").charges:
                yield key_id, OTHER, budgets.settings.default


def figures(budgets: Budgets, now: float | None = None) -> list[dict[str, Any]]:
    now = budgets.clock() if now is None else now
    rows = []
    for key_id, alias, budget in _budgeted(budgets):
        for name, limit in budget.limits().items():
            window_name, unit = LIMITS[name]
            window = budgets.ledger.window(key_id, window_name, now)
            if unit == "tokens":
                used, reserved = window.used_tokens, window.reserved_tokens
                limit_value: float = int(limit)
            else:
                used, reserved = round(window.used_usd, 6), round(window.reserved_usd, 6)
                limit_value = float(limit)
            rows.append({"key_alias": alias, "key_id": key_id, "budget": name, "unit": unit,
                         "window_s": WINDOWS[window_name], "limit": limit_value, "used": used, "reserved": reserved,
                         "remaining": round(limit_value - used - reserved, 6) if unit == "usd"
                         else limit_value - used - reserved,
                         "resets_at": _iso(window.oldest_leaves_at())})
    return rows


def remaining_tokens(budgets: Budgets, now: float | None = None) -> dict[str, int]:
    """Per alias, the tightest token limit's remaining; "other" is the least of the default-budget keys."""
    out: dict[str, int] = {}
    for row in figures(budgets, now):
        if row["unit"] != "tokens":
            continue
        alias = row["key_alias"]
        out[alias] = min(out.get(alias, row["remaining"]), row["remaining"])
    return out


class BudgetCollector:
    """`runtap_budget_remaining_tokens{key_alias}`, from a snapshot the ticker refreshes on the loop
    (a scrape runs in a thread, which must not walk the ledger while the loop changes it)."""

    def __init__(self, budgets: Budgets | None = None) -> None:
        self.snapshot: dict[str, int] = {}
        self._budgets = budgets

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("runtap_budget_remaining_tokens", "Tokens a budget can still reserve: its "
                                   "tightest token limit less used and reserved (rolling windows).",
                                   labels=["key_alias"])
        for alias, value in sorted(self.snapshot.items()):
            family.add_metric([alias], value)
        yield family
        if self._budgets is not None:  # an int read, a dict copied in C: safe from the scrape's thread
            rejections = CounterMetricFamily("runtap_budget_rejections", "Requests refused with 429 "
                                             "budget_exceeded.", labels=["key_alias"])
            for alias, count in sorted(self._budgets.rejections.copy().items()):
                rejections.add_metric([alias], count)
            yield rejections
            yield CounterMetricFamily("runtap_budget_admission_errors", "Budget admissions that raised; the "
                                      "request was forwarded unchecked (see the log).", value=self._budgets.errors)


def register_collector(registry: CollectorRegistry | None, budgets: Budgets) -> BudgetCollector:
    collector = BudgetCollector(budgets)
    collector.snapshot = remaining_tokens(budgets)
    if registry is not None:
        registry.register(collector)
    return collector


def tick(budgets: Budgets, collector: BudgetCollector | None) -> None:
    """Expire overdue reservations, age the windows, refresh the metric. Synchronous, on the loop."""
    now = budgets.clock()
    expired = budgets.ledger.expire_due(now)
    if expired:
        log.info("settled %d reservations at their reserved amount: their runs were not seen to end", len(expired))
    budgets.ledger.advance_all(now)
    if collector is not None:
        collector.snapshot = remaining_tokens(budgets, now)


def ticker(budgets: Budgets, collector: BudgetCollector | None, every_s: float = TICK_S
           ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running `tick` every `every_s` while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    tick(budgets, collector)
                except Exception:  # a bug here must not stop expiry for good
                    log.exception("budget tick failed")
                await asyncio.sleep(every_s)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run


def add_budget_routes(app: web.Application, budgets: Budgets | None) -> None:
    """`GET /admin/budgets` (the admin app's token middleware guards /admin/*)."""
    if budgets is None:
        return

    async def get_budgets(request: web.Request) -> web.Response:
        return web.json_response({"as_of": _iso(budgets.clock()), "budgets": figures(budgets)})

    app.router.add_get("/admin/budgets", get_budgets)
