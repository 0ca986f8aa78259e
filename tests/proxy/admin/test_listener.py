"""The admin listener (contract §7): the token, health, readiness and the /admin/* guard."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from proxy.admin.listener import admin_token, make_admin_app, token_path, write_token_file
from proxy.config import Settings
from proxy.errors import ConfigError

TOKEN = "admin-test-token-0123456789"
UNAUTHORIZED = {"error": {"message": "admin endpoints need Authorization: Bearer <token>",
                          "type": "invalid_request_error", "param": None, "code": "invalid_admin_token"}}


def settings_for(tmp_path: Path, admin_listen: str = "127.0.0.1:9464") -> Settings:
    return Settings.model_validate({"server": {"admin_listen": admin_listen},
                                    "recorder": {"db": str(tmp_path / "rec.duckdb")}})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- admin_token() ------------------------------------------------------------------------------------


def test_the_token_file_lives_beside_the_database(tmp_path):
    assert token_path(settings_for(tmp_path)) == tmp_path / "rec.duckdb.admin-token"


def test_the_env_token_wins_and_nothing_is_written(tmp_path):
    settings = settings_for(tmp_path)
    assert admin_token(settings, env={"RUNTAP_ADMIN_TOKEN": "from-env"}) == "from-env"
    assert list(tmp_path.iterdir()) == []


def test_without_the_env_token_a_fresh_random_one_is_made_and_written_0600_on_request(tmp_path):
    settings = settings_for(tmp_path)
    first = admin_token(settings, env={})
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)  # secrets.token_urlsafe(32): 256 bits
    assert list(tmp_path.iterdir()) == []  # written only once the database is ours (app.py)
    path = write_token_file(settings, first)
    assert path == token_path(settings)
    assert path.read_text() == first + "\n"
    assert mode(path) == 0o600
    second = admin_token(settings, env={})
    assert second != first
    write_token_file(settings, second)
    assert path.read_text() == second + "\n"
    assert mode(path) == 0o600


def test_an_empty_env_token_counts_as_unset(tmp_path):
    settings = settings_for(tmp_path)
    token = admin_token(settings, env={"RUNTAP_ADMIN_TOKEN": ""})
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)


def test_a_readable_token_file_left_behind_is_made_private(tmp_path):
    settings = settings_for(tmp_path)
    path = token_path(settings)
    path.write_text("old-token-readable-by-all\n")
    path.chmod(0o644)
    token = admin_token(settings, env={})
    write_token_file(settings, token)
    assert path.read_text() == token + "\n"
    assert mode(path) == 0o600


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "127.0.0.2:9464", "localhost:9464", "[::1]:9464", ":9464"])
def test_a_loopback_admin_listener_gets_a_file_token(tmp_path, listen):
    settings = settings_for(tmp_path, listen)
    assert admin_token(settings, env={})


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.168.1.10:9464", "example.com:9464",
                                    "127.attacker.example:9464"])
def test_a_non_loopback_admin_listener_needs_the_env_token(tmp_path, listen):
    settings = settings_for(tmp_path, listen)
    host = listen.rpartition(":")[0].strip("[]")
    with pytest.raises(ConfigError) as exc:
        admin_token(settings, env={})
    assert str(exc.value) == f"the admin listener on {host} is not loopback: set RUNTAP_ADMIN_TOKEN"
    assert list(tmp_path.iterdir()) == []
    assert admin_token(settings, env={"RUNTAP_ADMIN_TOKEN": "t0ken"}) == "t0ken"
    assert list(tmp_path.iterdir()) == []


# -- the app, with the real parts of a running proxy ---------------------------------------------------------


@pytest.fixture
async def admin(aiohttp_client, parts):
    return await aiohttp_client(make_admin_app(parts, TOKEN))


async def test_health_and_readiness_need_no_token(admin):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = await admin.get("/healthz", headers=headers)
        assert (r.status, await r.json()) == (200, {"status": "ok"})
        r = await admin.get("/readyz", headers=headers)
        assert (r.status, await r.json()) == (200, {"status": "ready"})


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Bearer wrong", TOKEN, f"Basic {TOKEN}",
                                           f"Token {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}0"])
async def test_admin_paths_without_the_exact_token_are_401_in_the_openai_shape(admin, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("POST", "/admin/sql"), ("GET", "/admin/budgets"), ("GET", "/admin/"),
                         ("DELETE", "/admin/anything/at/all")):
        r = await admin.request(method, path, headers=headers, json={"sql": "select 1"})
        assert (r.status, r.content_type, await r.json()) == (401, "application/json", UNAUTHORIZED), (method, path)


async def test_the_exact_token_passes_the_guard(admin):
    r = await admin.get("/admin/anything", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 404  # past the token check: there is no such endpoint


async def test_readyz_is_503_with_the_reason_when_a_batch_is_refused(admin, parts):
    writer = parts.writer
    writer.submit("requests", {"request_id": "rt_bad", "status": "not-a-number"})  # no INTEGER cast: refused
    await writer.flush()
    assert not writer.healthy
    r = await admin.get("/readyz")
    body = await r.json()
    assert (r.status, body) == (503, {"status": "not ready", "reason": writer.last_error})
    assert body["reason"].startswith("InvalidInputException: ") and "not-a-number" in body["reason"]
    r = await admin.get("/healthz")
    assert (r.status, await r.json()) == (200, {"status": "ok"})  # alive, just not ready
    writer.submit("requests", {"request_id": "rt_ok", "status": 200})
    await writer.flush()
    r = await admin.get("/readyz")
    assert (r.status, await r.json()) == (200, {"status": "ready"})


# -- the app, with a stand-in writer -----------------------------------------------------------------------


@dataclass
class StubWriter:
    healthy: bool
    last_error: str | None


async def test_readyz_follows_the_writer_live(aiohttp_client):
    writer = StubWriter(healthy=False, last_error="IOException: disk full")
    client = await aiohttp_client(make_admin_app(SimpleNamespace(writer=writer), TOKEN))  # type: ignore[arg-type]
    r = await client.get("/readyz")
    assert (r.status, await r.json()) == (503, {"status": "not ready", "reason": "IOException: disk full"})
    writer.healthy = True
    r = await client.get("/readyz")
    assert (r.status, await r.json()) == (200, {"status": "ready"})


async def test_readyz_waits_for_the_end_of_start_up(aiohttp_client):
    # The token file is written at the end of start-up: a read command that waits for /readyz must
    # find the new token, not the previous process's.
    parts = SimpleNamespace(writer=StubWriter(healthy=True, last_error=None), started=False)
    client = await aiohttp_client(make_admin_app(parts, TOKEN))  # type: ignore[arg-type]
    r = await client.get("/readyz")
    assert (r.status, await r.json()) == (503, {"status": "not ready", "reason": "starting"})
    parts.started = True
    r = await client.get("/readyz")
    assert (r.status, await r.json()) == (200, {"status": "ready"})
