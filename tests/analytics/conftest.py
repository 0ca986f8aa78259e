"""Fixtures for the read side: the sample recording (cold file), the live proxy with its admin app, the CLI.

`sample_db` is recorded once per session through the real proxy and SDK (workload.py), then
only read. The live fixtures reuse tests/conftest.py's `proxy`, with the fake upstream swapped
for the workload's seeded, clocked one so the same plan gives the same rows.
"""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from analytics.cli import main
from proxy.admin.listener import make_admin_app
from proxy.app import Parts
from proxy.testing.fake_upstream import FakeUpstream
from tests.analytics.workload import Clock, fake_upstream, play, record

ADMIN_TOKEN = "analytics-test-admin-token"


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("sample") / "sample.duckdb"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The Assistants API is deprecated", category=DeprecationWarning)
        asyncio.run(record(db))
    return db


@pytest.fixture
def clocked() -> tuple[FakeUpstream, Clock]:
    return fake_upstream()


@pytest.fixture
def fake(clocked: tuple[FakeUpstream, Clock]) -> FakeUpstream:
    return clocked[0]


@pytest.fixture
def clock(clocked: tuple[FakeUpstream, Clock]) -> Clock:
    return clocked[1]


@pytest.fixture
async def admin(aiohttp_server, parts: Parts) -> str:
    """The proxy's admin app on its own port (as `runtap serve` runs it); its URL."""
    server = await aiohttp_server(make_admin_app(parts, ADMIN_TOKEN))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def live(proxy, parts: Parts, fake: FakeUpstream, clock: Clock) -> Path:
    """The whole plan played through the running proxy and committed; the database it holds."""
    await play(str(proxy.make_url("/v1")), fake, clock)
    await parts.flush()
    return Path(parts.settings.recorder.db)


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """`await cli("runs", "--db", db)`: the read commands in a worker thread (the admin app needs the loop)."""
    monkeypatch.delenv("RUNTAP_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("RUNTAP_DB", raising=False)
    monkeypatch.delenv("RUNTAP_ADMIN_LISTEN", raising=False)

    async def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run
