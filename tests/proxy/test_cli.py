"""`runtap` the command (contract §2): key-id, the parser's defaults, precedence, config errors.

`proxy.cli.main` runs in-process. `serve` is stopped at the door: `proxy.relay.runner.run_relay_app` is replaced,
so the tests see exactly what would have been served without ever binding a port.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.app import PARTS
from proxy.cli import EXIT_CONFIG, build_parser, main
from proxy.config import Settings, load_settings
from proxy.keys import fingerprint
from proxy.relay import runner
from tests.conftest import RAW_KEY


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("RUNTAP_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # a default ./runtap.duckdb would land here, never in the repo


@pytest.fixture
def served(monkeypatch) -> list[dict[str, Any]]:
    """What `serve` handed to `run_relay_app` (the app, where and how), instead of serving it."""
    calls: list[dict[str, Any]] = []

    def run_app(app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        calls.append({"app": app, "host": host, "port": port, **kwargs})

    monkeypatch.setattr(runner, "run_relay_app", run_app)
    return calls


@pytest.fixture
def never_served(monkeypatch) -> None:
    def run_app(app: web.Application, host: str, port: int, **kwargs: Any) -> None:
        raise AssertionError(f"runtap serve reached run_relay_app(host={host!r}, "
                             f"port={port!r}) with a configuration it should have refused")

    monkeypatch.setattr(runner, "run_relay_app", run_app)


# -- key-id ----------------------------------------------------------------------------------------


def test_key_id_prints_the_fingerprint_of_the_key_on_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(RAW_KEY + "\n"))
    assert main(["key-id"]) == 0
    out, err = capsys.readouterr()
    assert out == "sha256:" + hashlib.sha256(RAW_KEY.encode()).hexdigest()[:16] + "\n"
    assert out == fingerprint(RAW_KEY) + "\n"
    assert re.fullmatch(r"sha256:[0-9a-f]{16}\n", out)
    assert RAW_KEY not in out + err


def test_key_id_of_a_known_key(monkeypatch, capsys):
    # printf sk-test | sha256sum  ->  f3abf2a6cc4f0098...
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-test\n"))
    assert main(["key-id"]) == 0
    assert capsys.readouterr().out == "sha256:f3abf2a6cc4f0098\n"


def test_key_id_ignores_surrounding_whitespace(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"  {RAW_KEY}\t\r\n"))
    assert main(["key-id"]) == 0
    assert capsys.readouterr().out == fingerprint(RAW_KEY) + "\n"


@pytest.mark.parametrize("stdin", ["", "\n", "   \n"])
def test_key_id_without_a_key_is_a_usage_error(monkeypatch, capsys, stdin):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["key-id"]) == EXIT_CONFIG == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "runtap key-id: give the API key on stdin\n")


def test_the_installed_runtap_command_reads_the_key_on_stdin():
    runtap = Path(sys.executable).with_name("runtap")
    result = subprocess.run([str(runtap), "key-id"], input=RAW_KEY + "\n", capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, fingerprint(RAW_KEY) + "\n")
    assert RAW_KEY not in result.stderr


# -- the parser --------------------------------------------------------------------------------------


def test_serve_flags_default_to_unset_so_env_and_file_can_apply():
    args = build_parser().parse_args(["serve"])
    assert (args.command, args.config, args.upstream, args.listen, args.admin_listen, args.db) == (
        "serve", None, None, None, None, None)


def test_serve_defaults_are_the_contracts():
    settings = load_settings(None, env={}, overrides={"server": {"upstream": None}})
    assert (settings.server.upstream, settings.server.listen, settings.server.admin_listen, settings.recorder.db) == (
        "https://api.openai.com", "127.0.0.1:8080", "127.0.0.1:9464", "./runtap.duckdb")
    assert settings == Settings()


def test_other_command_defaults():
    parser = build_parser()
    assert parser.parse_args(["demo"]).db == "./runtap-demo.duckdb"
    assert parser.parse_args(["fake-upstream"]).listen == "127.0.0.1:8081"
    args = parser.parse_args(["serve", "--upstream", "http://u:1", "--listen", "0.0.0.0:1", "--admin-listen",
                              "127.0.0.1:2", "--db", "d.duckdb", "--config", "c.toml"])
    assert (args.upstream, args.listen, args.admin_listen, args.db, args.config) == (
        "http://u:1", "0.0.0.0:1", "127.0.0.1:2", "d.duckdb", "c.toml")


@pytest.mark.parametrize("argv", [[], ["serve", "--nope"], ["frobnicate"]])
def test_bad_usage_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("usage: runtap")


# -- serve: what reaches run_app ----------------------------------------------------------------------


def test_serve_flags_beat_env_which_beats_the_file(tmp_path, monkeypatch, served):
    config = tmp_path / "runtap.toml"
    config.write_text('[server]\nupstream = "http://file.example"\nlisten = "127.0.0.1:1111"\n'
                      'admin_listen = "127.0.0.1:2222"\nshutdown_grace_s = 7.5\nuvloop = false\n\n'
                      '[recorder]\ndb = "file.duckdb"\n')
    monkeypatch.setenv("RUNTAP_CONFIG", str(config))
    monkeypatch.setenv("RUNTAP_UPSTREAM", "http://env.example")
    monkeypatch.setenv("RUNTAP_LISTEN", "127.0.0.1:3333")
    monkeypatch.setenv("RUNTAP_DB", str(tmp_path / "env.duckdb"))
    db = tmp_path / "flag.duckdb"
    assert main(["serve", "--listen", "127.0.0.2:4444", "--db", str(db)]) == 0
    [call] = served
    assert (call["host"], call["port"], call["shutdown_timeout"]) == ("127.0.0.2", 4444, 7.5)
    settings = call["app"][PARTS].settings
    assert settings.server.upstream == "http://env.example"
    assert settings.server.listen == "127.0.0.2:4444"
    assert settings.server.admin_listen == "127.0.0.1:2222"
    assert settings.recorder.db == str(db)
    # Both are written by the app's startup (run_app is replaced here): the token file only once
    # the database is ours, so a second proxy refused by the lock keeps the first one's token.
    assert not Path(f"{db}.admin-token").exists()
    assert not db.exists()  # the database is opened by the app's startup, which run_app would run


def test_serve_uses_the_env_admin_token_and_writes_no_file(tmp_path, monkeypatch, served):
    monkeypatch.setenv("RUNTAP_ADMIN_TOKEN", "from-the-env")
    config = tmp_path / "runtap.toml"
    config.write_text("[server]\nuvloop = false\n")
    assert main(["serve", "--config", str(config), "--admin-listen", "0.0.0.0:9464", "--db", "x.duckdb"]) == 0
    [call] = served
    assert (call["host"], call["port"]) == ("127.0.0.1", 8080)
    assert call["app"][PARTS].settings.server.admin_listen == "0.0.0.0:9464"
    assert sorted(os.listdir(tmp_path)) == ["runtap.toml"]


def test_serve_fixes_the_mmap_threshold_before_it_serves(tmp_path, monkeypatch, served):
    # Issue #3: the writer's freed batch buffers must go back to the system (proxy/malloc.py).
    calls: list[int] = []
    monkeypatch.setattr("proxy.malloc.fix_mmap_threshold", lambda: calls.append(len(served)) or True)
    config = tmp_path / "runtap.toml"
    config.write_text("[server]\nuvloop = false\n")
    assert main(["serve", "--config", str(config), "--db", "x.duckdb"]) == 0
    assert calls == [0]  # once, before run_app
    assert len(served) == 1


# -- serve: refused configurations ----------------------------------------------------------------------

BAD_CONFIGS = {
    "toml syntax": ("[server\nlisten = 1\n", ["cannot read config", "runtap.toml"]),
    "unknown key": ('[server]\nlistne = "127.0.0.1:1"\n', ["invalid configuration", "server.listne",
                                                            "Extra inputs are not permitted"]),
    "out of bounds": ("[server]\nshutdown_grace_s = -1\n", ["invalid configuration", "server.shutdown_grace_s",
                                                             "greater than or equal to 0"]),
    "wrong type": ('[recorder]\nbatch_max_rows = "many"\n', ["invalid configuration", "recorder.batch_max_rows"]),
    "section not a table": ('server = "x"\n', ["invalid configuration", "server"]),
    "listen not host:port": ('[server]\nlisten = "nonsense"\nuvloop = false\n', ["expected HOST:PORT", "nonsense"]),
    "listen port out of range": ('[server]\nlisten = "127.0.0.1:99999"\nuvloop = false\n', ["99999"]),
    "admin port out of range": ('[server]\nadmin_listen = "127.0.0.1:70000"\nuvloop = false\n', ["70000"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_an_invalid_config_file_exits_2_with_a_clear_message_and_writes_nothing(tmp_path, capsys, never_served,
                                                                                 case):
    text, expected = BAD_CONFIGS[case]
    config = tmp_path / "runtap.toml"
    config.write_text(text)
    assert main(["serve", "--config", str(config), "--db", str(tmp_path / "x.duckdb")]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("runtap: ") and "Traceback" not in err
    for fragment in expected:
        assert fragment in err
    assert sorted(os.listdir(tmp_path)) == ["runtap.toml"]  # refused before anything was written


def test_a_missing_config_file_exits_2(tmp_path, capsys, never_served):
    missing = tmp_path / "nope.toml"
    assert main(["serve", "--config", str(missing)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"runtap: cannot read config {missing}: ")
    assert "No such file or directory" in err


def test_a_bad_config_named_by_the_environment_exits_2(tmp_path, monkeypatch, capsys, never_served):
    config = tmp_path / "env.toml"
    config.write_text("[server]\nmax_recorded_body_bytes = 0\n")
    monkeypatch.setenv("RUNTAP_CONFIG", str(config))
    assert main(["serve"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("runtap: invalid configuration") and "server.max_recorded_body_bytes" in err


@pytest.mark.parametrize("flag", ["--admin-listen", "--listen"])
def test_a_bad_host_port_flag_exits_2(tmp_path, capsys, never_served, flag):
    config = tmp_path / "runtap.toml"
    config.write_text("[server]\nuvloop = false\n")
    assert main(["serve", "--config", str(config), flag, "localhost", "--db", "x.duckdb"]) == EXIT_CONFIG
    field = flag.removeprefix("--").replace("-", "_")
    assert capsys.readouterr().err == (f"runtap: invalid configuration: server.{field}: expected HOST:PORT with a "
                                       "port from 0 to 65535, got 'localhost'\n")

