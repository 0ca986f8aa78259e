"""`python -m proxy serve` as a real child process, for the storage and process cases.

The fake upstream runs in the test's loop; the child's stdout and stderr go to files under the
test's directory, so the suite's leak check (every file under it) reads the child's logs too.
While a child runs, its database is read through its own admin listener (`/admin/sql`, with the
token file it wrote), the way `runtap sql` does: DuckDB lets one process hold the file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

START_S = 20.0


async def poll(check: Callable[[], Any], deadline_s: float = 10.0) -> Any:
    """Call `check()` (sync or async) until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without RUNTAP_* / OTEL_* settings that would leak into the child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
    env.update(extra)
    return env


# `python -m proxy ARGS` in a child whose files may not grow past a limit: writes past it fail with
# EFBIG ("File too large"), which is a full disk as far as the database is concerned. SIGXFSZ would
# kill the child instead, so it is ignored, as a server's would be. Set inside the child (not in a
# preexec_fn) because forking a multi-threaded test process to run Python code is unsafe.
_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY)); "
            "sys.argv = ['runtap', *sys.argv[2:]]; runpy.run_module('proxy', run_name='__main__')")


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

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    async def wait_exit(self, deadline_s: float = START_S) -> int | None:
        await poll(lambda: self.proc.poll() is not None, deadline_s)
        return self.proc.poll()

    async def wait_ready(self) -> None:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                if self.proc.poll() is not None:
                    pytest.fail(f"runtap exited {self.proc.returncode} while starting:\n{self.output()}")
                try:
                    async with session.get(self.admin_url + "/readyz") as r:  # the writer is running
                        ready = r.status == 200
                except aiohttp.ClientConnectionError:
                    return False
                # The proxy port opens once every startup step is done (the token file written).
                return ready and not await connection_refused(self.port)

            if not await poll(up, START_S):
                pytest.fail(f"runtap did not come up within {START_S} s:\n{self.output()}")

    @property
    def token(self) -> str:
        return Path(f"{self.db}.admin-token").read_text().strip()

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


def spawn(tmp_path: Path, n: int, upstream: str, config: str, db: Path, max_file_bytes: int | None,
          port: int, admin_port: int) -> Child:
    conf = tmp_path / f"child{n}.toml"
    conf.write_text(config)
    out, err = tmp_path / f"child{n}.out", tmp_path / f"child{n}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        args = ["--config", str(conf), "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
                "--admin-listen", f"127.0.0.1:{admin_port}", "--db", str(db)]
        python = [sys.executable, "-m", "proxy"] if max_file_bytes is None else [
            sys.executable, "-c", _LIMITED, str(max_file_bytes)]
        proc = subprocess.Popen([*python, *args], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                cwd=tmp_path, env=child_env())
    return Child(proc, port, admin_port, db, out, err)


@pytest.fixture
def serve(tmp_path: Path, unused_tcp_port_factory):
    """`await serve(upstream=URL, config="toml", max_file_bytes=N, wait=True)` starts `python -m proxy`
    on fresh loopback ports, on `tmp_path / "runtap.duckdb"` unless `db` is given."""
    children: list[Child] = []

    async def start(*, upstream: str, config: str = "", db: Path | None = None, wait: bool = True,
                    max_file_bytes: int | None = None) -> Child:
        db = db or tmp_path / "runtap.duckdb"
        child = spawn(tmp_path, len(children) + 1, upstream, config, db, max_file_bytes,
                      unused_tcp_port_factory(), unused_tcp_port_factory())
        children.append(child)
        if wait:
            await child.wait_ready()
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(timeout=10)


async def connection_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return False


def file_size(path: Path) -> int | None:
    """The size of a file, or None when it does not exist (sync: cheap, and out of the async lint's way)."""
    return path.stat().st_size if path.exists() else None
