"""`python -m proxy` as a real child process: what tests/e2e and tests/faults both need.

The child's stdout and stderr go to files (a pipe nobody reads could block it, and the fault
suite's leak check reads every file under the test's directory). While a child runs, its database
is read through its own admin listener (`/admin/sql`, with the token file it wrote), the way
`runtap sql` does: DuckDB lets one process hold the file.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

START_S = 20.0
"""Deadline for a child to come up (or to give up)."""


async def poll(check: Callable[[], Any], deadline_s: float = 10.0) -> Any:
    """Call `check()` (sync or async) until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def connection_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except OSError:  # e.g. reset: caught in the backlog as the listener closed; ask again
        return False
    writer.close()
    await writer.wait_closed()
    return False


def url_of(server: Any) -> str:
    """The base URL of an aiohttp test server (the fake upstream), for `--upstream`."""
    return str(server.make_url("")).rstrip("/")


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the recording of a stopped proxy, the way a user would: a read-only connection."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def recording_files(db: Path) -> set[str]:
    """Files beside the database that belong to it (the file, its WAL, spill and token files)."""
    return {p.name for p in db.parent.iterdir() if p.name.startswith(db.name)}


def kill_all(children: list[Child]) -> None:
    """Fixture teardown: no child outlives its test."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(timeout=10)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any RUNTAP_* / OTEL_* setting that would leak into the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    env.update(extra)
    return env


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    db: Path
    out: Path
    err: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token_file(self) -> Path:
        return Path(f"{self.db}.admin-token")

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, deadline_s: float = START_S) -> int | None:
        """The exit code, or None if the process is still running at the deadline."""
        await poll(lambda: self.proc.poll() is not None, deadline_s)
        return self.proc.poll()

    async def wait_ready(self) -> None:
        """Start-up is over (/readyz answers 200, the token file written) and the proxy port accepts."""
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                if self.proc.poll() is not None:
                    pytest.fail(f"runtap exited {self.proc.returncode} while starting:\n{self.output()}")
                try:
                    async with session.get(self.admin_url + "/readyz") as r:
                        ready = r.status == 200
                except aiohttp.ClientConnectionError:
                    return False
                return ready and await port_open(self.port)

            if not await poll(up, START_S):
                pytest.fail(f"runtap did not come up within {START_S} s:\n{self.output()}")

    async def sql(self, query: str) -> list[list[Any]]:
        async with aiohttp.ClientSession() as session, session.post(
            self.admin_url + "/admin/sql", json={"sql": query}, headers={"Authorization": f"Bearer {self.token}"},
        ) as r:
            body = await r.json()
            assert r.status == 200, body
            return body["rows"]

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.admin_url + path) as r:
            return r.status, await r.text()
