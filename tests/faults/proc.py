"""`python -m proxy` children for the storage and process cases (tests/processes.py has the rest).

The fake upstream runs in the test's loop; the child's stdout and stderr go to files under the
test's directory, so the suite's leak check (every file under it) reads the child's logs too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import START_S, Child, child_env, connection_refused, kill_all, poll

__all__ = ["START_S", "Child", "connection_refused", "file_size", "poll", "serve", "spawn"]

# `python -m proxy ARGS` in a child whose files may not grow past a limit: writes past it fail with
# EFBIG ("File too large"), which is a full disk as far as the database is concerned. SIGXFSZ would
# kill the child instead, so it is ignored, as a server's would be. Set inside the child (not in a
# preexec_fn) because forking a multi-threaded test process to run Python code is unsafe.
_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY)); "
            "sys.argv = ['runtap', *sys.argv[2:]]; runpy.run_module('proxy', run_name='__main__')")


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
    kill_all(children)


def file_size(path: Path) -> int | None:
    """The size of a file, or None when it does not exist (sync: cheap, and out of the async lint's way)."""
    return path.stat().st_size if path.exists() else None
