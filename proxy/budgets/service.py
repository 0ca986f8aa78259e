"""The budgets' composition: the parts built once per app, their start-up, ticker and SIGHUP reload.

app.py asks this module for four things: `admit` for the forward handler, `observer` for the
observers, `alias` for metric labels, and cleanup contexts for start-up (load the ledger), the
ticker and SIGHUP. Reloading swaps the `[budgets]` (and `[prices]`) settings in one step on the
event loop: requests in flight keep their reservations, the next admission sees the new limits,
and no connection is touched. Other sections need a restart (logged when they changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import duckdb
from aiohttp import web
from prometheus_client import CollectorRegistry

from ..config import Settings
from ..errors import RuntapError
from ..runs import RunTracker
from ..store.migrations import price_rows, set_prices
from .gate import Budgets, prices_from
from .ledger import Ledger, RowSink
from .observer import BudgetObserver, upstream_canceller
from .report import BudgetCollector, register_collector, ticker
from .store import load_charges, set_limits

log = logging.getLogger("runtap.budgets")
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


class BudgetService:
    def __init__(self, settings: Settings, tracker: RunTracker, sink: RowSink,
                 session: Callable[[], aiohttp.ClientSession | None]) -> None:
        self.settings = settings
        self.ledger = Ledger(sink)
        self.budgets = Budgets(settings.budgets, prices_from(price_rows(settings.prices.models)), self.ledger, tracker)
        self.observer = BudgetObserver(self.budgets, upstream_canceller(session, settings.server.upstream))
        self.admit = self.budgets.admit
        self.alias = self.budgets.alias
        self.collector: BudgetCollector | None = None

    def register(self, registry: CollectorRegistry | None) -> None:
        self.collector = register_collector(registry, self.budgets)

    def start(self, con: duckdb.DuckDBPyConnection) -> int:
        """Blocking (run it in a thread, before traffic): the config's limits in, the ledger out."""
        set_limits(con, self.settings.budgets)
        return self.ledger.load(load_charges(con))

    def apply(self, settings: Settings) -> None:
        """New settings from a SIGHUP: budgets and prices now; anything else needs a restart."""
        old = self.settings
        if settings.model_copy(update={"budgets": old.budgets, "prices": old.prices}) != old:
            log.warning("SIGHUP: only [budgets] and [prices] are reloaded; restart runtap for the other changes")
        self.settings = self.settings.model_copy(update={"budgets": settings.budgets, "prices": settings.prices})
        self.budgets.configure(settings.budgets, prices_from(price_rows(settings.prices.models)))

    def ticker(self) -> CleanupContext:
        return ticker(self.budgets, self.collector)

    def sighup(self, load: Callable[[], Settings] | None, cursor: Callable[[], duckdb.DuckDBPyConnection]
               ) -> CleanupContext:
        """Reload on SIGHUP when `load` (re-reading the config file) is given."""

        async def reload() -> None:
            try:
                settings = await asyncio.to_thread(load)  # type: ignore[arg-type]  # only installed with load
            except RuntapError as exc:
                log.error("SIGHUP: configuration not reloaded, the old one stays: %s", exc)
                return
            self.apply(settings)
            try:  # the tables that mirror the config (the writer never touches them)
                with contextlib.closing(cursor()) as con:
                    await asyncio.to_thread(set_limits, con, settings.budgets)
                    await asyncio.to_thread(set_prices, con, settings.prices.models)
            except (RuntapError, duckdb.Error) as exc:
                log.error("SIGHUP: budgets reloaded, but budget_limits / prices not written: %s", exc)
            log.info("SIGHUP: budgets reloaded (%d keys, unknown keys: %s)", len(settings.budgets.keys),
                     settings.budgets.unknown_keys)

        async def context(app: web.Application) -> AsyncIterator[None]:
            if load is None:
                yield
                return
            loop = asyncio.get_running_loop()
            tasks: set[asyncio.Task[None]] = set()

            def on_signal() -> None:
                task = loop.create_task(reload())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            loop.add_signal_handler(signal.SIGHUP, on_signal)
            yield
            loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()

        return context
