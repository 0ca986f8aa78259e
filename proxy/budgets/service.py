"""The budgets' composition: the parts built once per app, their start-up, ticker and SIGHUP reload.

app.py asks this module for four things: `admit` for the forward handler, `observer` for the
observers, `alias` for metric labels, and cleanup contexts for start-up (load the ledger), the
ticker, SIGHUP and shutdown (budget cancels still in flight). Reloading swaps the `[budgets]` (and
`[prices]`) settings in one step on the event loop: requests in flight keep their reservations,
the next admission sees the new limits, and no connection is touched. Other sections need a
restart (logged when they changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp
import duckdb
from aiohttp import web
from prometheus_client import CollectorRegistry

from ..config import Settings
from ..errors import RuntapError
from ..record.migrations import price_rows, set_prices
from ..runs import RunStore
from .gate import Budgets, prices_from
from .ledger import Ledger, RowSink
from .observer import BudgetObserver, upstream_canceller
from .report import BudgetCollector, register_collector, ticker
from .store import load_charges, set_limits

log = logging.getLogger("runtap.budgets")
CleanupContext = Callable[[web.Application], AsyncIterator[None]]
FLUSH_TIMEOUT_S = 10.0
"""How long a SIGHUP waits for the writer before reading a newly budgeted key's history."""


class BudgetService:
    def __init__(self, settings: Settings, tracker: RunStore, sink: RowSink,
                 session: Callable[[], aiohttp.ClientSession | None]) -> None:
        self.settings = settings
        self.ledger = Ledger(sink)
        self.budgets = Budgets(settings.budgets, prices_from(price_rows(settings.prices.models)), self.ledger, tracker)
        self.observer = BudgetObserver(self.budgets, upstream_canceller(session, settings.server.upstream))
        self.admit = self.budgets.admit
        self.alias = self.budgets.alias
        self.collector: BudgetCollector | None = None
        self._sink = sink
        self._reloading = asyncio.Lock()
        """One SIGHUP reload at a time: two interleaved would apply and write configs out of order."""

    def register(self, registry: CollectorRegistry | None) -> None:
        self.collector = register_collector(registry, self.budgets)

    def start(self, con: duckdb.DuckDBPyConnection) -> int:
        """Blocking (run it in a thread, before traffic): the config's limits in, the ledger out."""
        set_limits(con, self.settings.budgets)
        return self.ledger.load(load_charges(con, self._tracked_keys(self.settings)))

    @staticmethod
    def _tracked_keys(settings: Settings) -> set[str] | None:
        """The keys whose windows the ledger keeps; None: every key (unknown_keys = "default")."""
        budgets = settings.budgets
        return None if budgets.unknown_keys == "default" else {k.key_id for k in budgets.keys}

    async def reconfigure(self, settings: Settings, cursor: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        """`apply` for a SIGHUP, first loading the history of keys that get a budget now: their windows
        must hold their recent spend from the first admission under the new limits."""
        before, after = self._tracked_keys(self.settings), self._tracked_keys(settings)
        new: set[str] | None = set() if before is None else (None if after is None else after - before)
        if new == set():
            self.apply(settings)
            return
        self.ledger.hold(new)  # charges of these keys that settle while the database is read
        try:
            flush = getattr(self._sink, "flush", None)
            if flush is not None:  # the database catches up with the ledger first
                try:
                    await asyncio.wait_for(flush(), FLUSH_TIMEOUT_S)
                except TimeoutError:  # a stuck writer must not stall reloads: read what is there
                    log.warning("SIGHUP: the recording did not catch up in %g s; reading it as it is",
                                FLUSH_TIMEOUT_S)
            with contextlib.closing(cursor()) as con:
                rows = await asyncio.to_thread(load_charges, con, new, open_ones=False)
        except BaseException:
            self.ledger.unhold()
            raise
        self.apply(settings, rows)

    def apply(self, settings: Settings, history: Iterable[Mapping[str, Any]] = ()) -> None:
        """New settings from a SIGHUP: budgets and prices now; anything else needs a restart. Keys
        that get a budget take their charges in memory and their `history` (see `reconfigure`)."""
        old = self.settings
        if settings.model_copy(update={"budgets": old.budgets, "prices": old.prices}) != old:
            log.warning("SIGHUP: only [budgets] and [prices] are reloaded; restart runtap for the other changes")
        self.settings = self.settings.model_copy(update={"budgets": settings.budgets, "prices": settings.prices})
        self.budgets.configure(settings.budgets, prices_from(price_rows(settings.prices.models)))
        self.ledger.untrack()  # keys whose budget is gone: their history is no longer needed
        loaded = self.ledger.adopt(history)
        if loaded:
            log.info("SIGHUP: %d charges of newly budgeted keys taken into their windows", loaded)

    def cleanup(self) -> CleanupContext:
        """Awaits, at shutdown, the budget cancels still in flight (after the upstream session closed)."""

        async def context(app: web.Application) -> AsyncIterator[None]:
            yield
            await self.observer.close()

        return context

    def ticker(self) -> CleanupContext:
        return ticker(self.budgets, self.collector)

    def sighup(self, load: Callable[[], Settings] | None, cursor: Callable[[], duckdb.DuckDBPyConnection]
               ) -> CleanupContext:
        """Reload on SIGHUP when `load` (re-reading the config file) is given."""

        async def reload() -> None:
            async with self._reloading:
                try:
                    settings = await asyncio.to_thread(load)  # type: ignore[arg-type]  # only installed with load
                except RuntapError as exc:
                    log.error("SIGHUP: configuration not reloaded, the old one stays: %s", exc)
                    return
                try:
                    await self.reconfigure(settings, cursor)
                except Exception as exc:  # a task nobody awaits: anything escaping it would be lost
                    log.error("SIGHUP: the history of newly budgeted keys could not be read; budgets not "
                              "reloaded: %s", exc)
                    return
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
            pending = list(tasks)
            for task in pending:
                task.cancel()
            # Awaited before the writer (torn down after this) closes under a reload still reading it.
            await asyncio.gather(*pending, return_exceptions=True)

        return context
