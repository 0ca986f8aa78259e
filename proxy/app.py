"""The composition root: builds every part, passes dependencies in, pairs setup with teardown.

Nothing here is business logic. The proxy app forwards everything; the admin app (admin.py) is
served on its own listener so that no path on the proxy port can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from . import redact
from .admin.listener import make_admin_app, write_token_file
from .apis.assistants.runs import RunTracker
from .budgets.service import BudgetService
from .config import Settings, parse_hostport
from .observers import Observers
from .record.migrations import set_prices
from .record.recorder import Recorder
from .record.writer import Writer
from .relay.forward import Forwarder
from .relay.heads import Upstream
from .relay.upstream import UpstreamPool
from .telemetry.metrics import make_registry

if TYPE_CHECKING:
    from .telemetry.tracing import Tracing

log = logging.getLogger("runtap")
# Where tracing.traces_endpoint() finds an endpoint besides [telemetry] otlp_endpoint: keep in step.
TRACES_ENDPOINT_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass(slots=True)
class Parts:
    """What the running proxy is made of; tests and the admin app read it."""

    settings: Settings
    writer: Writer
    tracker: RunTracker
    observers: Observers
    session: aiohttp.ClientSession | None = None
    """For runtap's own calls upstream (a budget's run cancel); the relay has its pool."""
    pool: UpstreamPool | None = None
    forwarder: Forwarder | None = None
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    registry: CollectorRegistry | None = None
    tracing: Tracing | None = None
    budgets: BudgetService | None = None
    started: bool = False
    """Start-up is over: recording, prices, budgets and the admin token file are in place."""

    async def flush(self, exchanges_timeout_s: float = 30.0) -> None:
        """Until everything seen so far is in the database: exchanges in flight end (bounded),
        the taps' work they queued behind the relay (deferred_tap.DeferredTap ends with call_soon) runs,
        then the writer commits."""
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=exchanges_timeout_s)
        await asyncio.sleep(0)
        await self.writer.flush()


PARTS = web.AppKey("parts", Parts)


def make_tracing(settings: Settings, tracker: RunTracker, *, registry: CollectorRegistry) -> Tracing | None:
    """`tracing.make_tracing`, imported only when an endpoint is configured (issue #3): the
    OpenTelemetry SDK and its OTLP exporter cost ~4 MB of RSS to import, and without an endpoint
    tracing builds nothing anyway."""
    if not (settings.telemetry.otlp_endpoint or any(os.environ.get(name) for name in TRACES_ENDPOINT_ENV)):
        return None
    from .telemetry.tracing import make_tracing as make

    return make(settings, tracker, registry=registry)


async def _finish_inflight(tasks: set[asyncio.Task[None]], grace_s: float) -> None:
    """Let exchanges still running finish within the grace period, then cancel the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=grace_s)
    for task in pending:
        task.cancel()
    if pending:
        log.warning("cancelled %d exchanges still running after the %g s grace period", len(pending), grace_s)
        await asyncio.wait(pending)


def make_app(
    settings: Settings, admin_token: str | None = None, *, token_file: bool = False,
    reload: Callable[[], Settings] | None = None,
) -> web.Application:
    """The proxy application: its parts and their start-up and cleanup. The proxy port is served by
    the relay core on this app's runner (relay/runner.py: `RelayRunner`, `run_relay_app`). With
    `admin_token`, the admin listener is started beside it, and with `token_file` the token is
    written beside the database once the database is ours. With `reload` (re-reading the config),
    SIGHUP reloads the budgets."""
    redact.install()  # aiohttp's parser errors quote request headers, the key among them
    writer = Writer(
        settings.recorder.db,
        spill_path=settings.spill_path,
        batch_max_rows=settings.recorder.batch_max_rows,
        batch_interval_s=settings.recorder.batch_interval_ms / 1000,
        memory_limit=settings.recorder.duckdb_memory_limit,
        max_queue_rows=settings.recorder.max_queue_rows,
        nice=settings.recorder.writer_nice,
    )
    tracker = RunTracker(settings.recorder.max_tracked_runs, settings.recorder.abandoned_turn_s)
    budgets = BudgetService(settings, tracker, writer, lambda: parts.session)
    registry, metrics = make_registry(writer, tracker, key_alias=budgets.alias,
                                      max_tracked=settings.recorder.max_tracked_runs)
    budgets.register(registry)
    tracing = make_tracing(settings, tracker, registry=registry)
    watched = [Recorder(writer, tracker, record_content=settings.recorder.record_content),
               *([metrics] if settings.telemetry.metrics else []), budgets.observer,
               *(tracing.observers if tracing else ())]
    observers = Observers(watched, on_error=metrics.observer_error)
    metrics.watch_observers(o.name for o in watched)
    parts = Parts(settings, writer, tracker, observers, registry=registry, tracing=tracing, budgets=budgets)
    app = web.Application()
    app[PARTS] = parts

    async def recording(app: web.Application) -> AsyncIterator[None]:
        starting = asyncio.ensure_future(asyncio.to_thread(writer.start))
        try:
            report = await asyncio.shield(starting)
            log.info("recording to %s (%s)", settings.recorder.db, report)
            with contextlib.closing(writer.cursor()) as cursor:  # list prices + the config's [prices]
                await asyncio.to_thread(set_prices, cursor, settings.prices.models)
            with contextlib.closing(writer.cursor()) as cursor:  # budget limits in, the ledger out
                loaded = await asyncio.to_thread(budgets.start, cursor)
            log.info("budgets: %d charges loaded from the recording", loaded)
            if admin_token is not None and token_file:
                write_token_file(settings, admin_token)
            parts.started = True
        except BaseException:
            # A SIGTERM while starting (a long spill replay) cancels this step, but the thread goes
            # on and start() leaves the writer's non-daemon thread running; aiohttp only cleans up
            # steps that finished starting, so nobody would close it and the process would hang.
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.to_thread(writer.close)
            raise
        yield
        await asyncio.to_thread(writer.close)  # drains the queue

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        timeouts = settings.timeouts
        parts.pool = UpstreamPool(Upstream.parse(settings.server.upstream), timeouts.connect_s)
        parts.forwarder = Forwarder(parts.pool, settings, observers, tracker, parts.inflight, admit=budgets.admit)
        parts.session = aiohttp.ClientSession(
            # auto_decompress=False: compressed bodies reach the client compressed (contract §4).
            auto_decompress=False,
            # No total timeout: a live run may stream for many minutes (protocol.md §6.5).
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            # Send only the client's headers: aiohttp's defaults would change what upstream sends.
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await _finish_inflight(parts.inflight, settings.server.shutdown_grace_s)
        parts.pool.close()
        await parts.session.close()

    async def admin_listener(app: web.Application) -> AsyncIterator[None]:
        if admin_token is None:
            yield
            return
        host, port = parse_hostport(settings.server.admin_listen)
        runner = web.AppRunner(make_admin_app(parts, admin_token), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        yield
        await runner.cleanup()

    # Tracing first, so it is torn down last: after in-flight exchanges ended their spans.
    # The admin listener binds before the writer starts: a port in use must fail before any
    # thread runs (aiohttp does not clean up earlier startup steps when a later one fails).
    # budgets.cleanup() before upstream_session: its teardown (awaiting budget cancels) runs after
    # the exchanges in flight ended and the session closed, so no cancel can start after it.
    if tracing is not None:
        from .telemetry.tracing import tracing_cleanup  # loaded already: make_tracing built it

        app.cleanup_ctx.append(tracing_cleanup(tracing))
    app.cleanup_ctx.extend([admin_listener, recording, budgets.ticker(),
                            budgets.sighup(reload, writer.cursor), budgets.cleanup(), upstream_session])
    return app
