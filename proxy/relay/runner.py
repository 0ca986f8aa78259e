"""The relay core served on aiohttp's runner: the app's start-up and cleanup, the core's sockets.

`RelayRunner` is aiohttp's `AppRunner` with one change: the protocol factory its sites listen with
is the relay core's (`RelayServer`), not aiohttp's web handler. So `make_app`'s cleanup contexts
(the writer, budgets, the admin listener, tracing, the upstream pool) start and stop exactly as
they did, `TCPSite`/`SockSite` and aiohttp's test server bind the proxy port, and the request path
is the core alone. `run_relay_app` is `web.run_app` on that runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from .client import ClientConnection
from .forward import Forwarder


class Connections(set[ClientConnection]):
    """The open client connections, and an event for when there are none."""

    def __init__(self) -> None:
        super().__init__()
        self.none_open = asyncio.Event()
        self.none_open.set()

    def add(self, conn: ClientConnection) -> None:
        super().add(conn)
        self.none_open.clear()

    def discard(self, conn: ClientConnection) -> None:
        super().discard(conn)
        if not self:
            self.none_open.set()


class RelayServer:
    """The protocol factory of the proxy port, with the shutdown steps aiohttp's runner calls."""

    def __init__(self, forwarder: Callable[[], Forwarder]) -> None:
        self._forwarder = forwarder
        self.connections = Connections()

    def __call__(self) -> ClientConnection:
        return ClientConnection(self._forwarder(), self.connections)

    def pre_shutdown(self) -> None:
        """The listeners are closed: close idle connections, and the others after their response."""
        for conn in list(self.connections):
            conn.shut()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109  # aiohttp's signature
        """Wait (up to `timeout`) for connections to finish their response; the exchanges still
        running after it are make_app's to end (`shutdown_grace_s`, then cancelled)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout or 0):
                await self.connections.none_open.wait()


class RelayRunner(web.AppRunner):
    """aiohttp's AppRunner serving the relay core (see the module docstring)."""

    async def _make_server(self) -> Any:
        loop = asyncio.get_running_loop()
        app = self.app
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        from ..app import PARTS

        parts = app[PARTS]

        def forwarder() -> Forwarder:
            assert parts.forwarder is not None, "the upstream pool starts with the app"
            return parts.forwarder

        return RelayServer(forwarder)

    async def _cleanup_server(self) -> None:
        await self.app.cleanup()


class RelayTestServer(TestServer):
    """aiohttp's TestServer (`make_url`, `app`, `close`) serving the relay core."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs.pop("handler_cancellation", None)
        return RelayRunner(self.app, **kwargs)


def run_relay_app(app: web.Application, host: str, port: int, *, shutdown_timeout: float,
                  print_line: Callable[[str], None]) -> None:
    """`web.run_app` for the relay: serve until SIGINT/SIGTERM, then clean up as aiohttp does."""

    async def serve() -> None:
        runner = RelayRunner(app, handle_signals=True, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            print_line(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
            await asyncio.Event().wait()  # until SIGINT/SIGTERM cancels this task
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        with contextlib.suppress(Exception):
            loop.add_signal_handler(signal.SIGTERM, lambda: None)  # a second SIGTERM must not kill the cleanup
        if not main.done():
            main.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(main)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
