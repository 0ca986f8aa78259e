"""Benchmark: runtap in front of a fast upstream, against the same upstream called directly.

Processes, all on loopback: the fast upstream (``scripts/bench_upstream.py``: precomputed bytes, a
60-event streamed run and a JSON run, a 60-event streamed Response and a 60-frame Chat Completions
stream, distinct ids per request), the proxy (``python -m proxy``,
i.e. ``runtap serve``, recording to a fresh DuckDB file), the "floor" (the same script as a bare
aiohttp + uvloop passthrough that records nothing; ``--no-floor`` skips it), nginx (the system's,
e.g. Debian's package, which ``make bench`` installs: its own process with a generated config, one
worker, a streaming reverse proxy with upstream keep-alive; ``--no-nginx`` skips it, and without an
nginx binary the run goes on without it) and the load generator (this process: one aiohttp
ClientSession on uvloop, keep-alive connections).

Phases, in order:
1. On the freshly started proxy (after a few recorded streams): 1,000 streams open at once, held
   by the upstream after their first 5 events; the proxy's RSS is sampled while all are open, then
   they are released and must all complete.
2. Streamed runs (``POST /v1/threads/runs``, ``"stream": true``), then JSON runs
   (``GET /v1/threads/{t}/runs/{r}``), then streamed Responses (``POST /v1/responses``, kind
   ``responses``) and Chat Completions streams (``POST /v1/chat/completions`` with
   ``stream_options.include_usage``, kind ``chat``), each at concurrency 1 and 32: a warm-up, then
   a fixed number of requests per target in alternating rounds (direct, nginx, floor, runtap, then
   the reverse). ``--kinds`` picks among them; the report shows the three streams side by side.
3. The recorder inside runtap at a paced rate: streamed runs started on a fixed schedule (open
   loop) so that runtap relays and records ``--paced-events`` events a second (20,000, the target)
   for ``--paced-s`` seconds, its queue depth sampled from /metrics: does the queue grow?
4. SIGTERM (the proxy drains and flushes); the DuckDB file is opened read-only and every proxied
   request's rows (events, requests, runs, the answer; for Responses also its responses row) are
   counted against what was sent. Responses and Chat turns are runs rows (``api``); every SSE frame
   is an event row: 60 per Responses stream (it has no ``[DONE]``), 60 per Chat stream (``[DONE]``
   included).
5. store.Writer alone, in this process: rows/s unpaced, and its queue at a paced 20,000 rows/s.

Per request: total latency and time to first event (the first body chunk holding ``event:``; for
Chat, whose frames have no event name, ``data: ``).
Proxy CPU per request comes from /proc/PID/stat over each proxied round until the proxy is idle
again, so the recording work for that round counts (the event-loop thread is also shown apart); for
nginx, of its master and worker together.
Peak RSS is VmHWM, restarted for each phase. CPU used by other processes on the machine is
reported, since it disturbs every figure. Output: Markdown tables on stdout, each figure beside
its target; JSON with ``--json PATH``. Progress goes to stderr.

    python scripts/bench.py [--quick] [--no-floor] [--no-nginx] [--json results.json] [--keep]

The default run takes about four and a half minutes on 2 CPUs, ``--quick`` about a minute and
three quarters; without the Responses and Chat streams (``--kinds stream,json``) about three
minutes and a minute and a quarter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable
HOST = "127.0.0.1"
TARGETS = {
    "added_p50_c1_ms": 0.5,
    "added_p50_c32_ms": 3.0,
    "throughput_ratio_c32": 0.7,
    "recorder_events_per_s": 20_000,
    "rss_open_mb": 150,
    "observability_p50_ms": 0.2,
}
REFERENCES = {
    "nginx": "nginx, one worker, as a streaming reverse proxy: what a mature C proxy adds",
    "floor": "the bare aiohttp passthrough: what recording costs on top of relaying",
}
"""Proxies measured beside runtap that record nothing, in the order of each round."""
OBSERVABILITY_TARGETS = ("plain", "traced")
"""With --observability (the default): two more recording proxies, alternating with the others in
every round: `plain` with metrics and tracing off, `traced` with metrics on and every span exported
over OTLP/HTTP (to the fast upstream's /v1/traces sink). Their difference is what observability
adds."""
WRITER_MAX_DEPTH = 10_000
"""'Without its queue growing': at the paced rate the queue never holds more than 0.5 s of rows."""
BACKLOG_S = 0.3
"""A proxy still busy longer than this after a round had a recording backlog: its queue grew."""
PACED_SAMPLE_S = 0.1
"""How often the paced phase reads the queue depth."""
PACED_BUSY_S = 1.0
"""After the paced phase the last batch is still to be written: it waits up to the batch interval
(250 ms), and its write may meet one of DuckDB's checkpoints; a backlog would take far longer."""
QUIET_WINDOW_S = 0.1
QUIET_TICKS = 1
"""The proxy is idle when it used at most one clock tick (10 ms) of CPU in a 100 ms window."""
BASE_HEADERS = {
    "Authorization": "Bearer sk-bench-not-a-key",
    "OpenAI-Beta": "assistants=v2",
}
KINDS = ("stream", "responses", "chat", "json")
"""The scenarios' kinds, in the order they are reported: the three streams side by side, then JSON."""
API_STREAMS = ("responses", "chat")
"""The streams of the Responses and Chat Completions APIs (the upstream's info has a section for each)."""
KIND_LETTERS = {"stream": "S", "json": "J", "responses": "R", "chat": "C"}
"""First character of a scenario's request tags (lower case for its warm-up); H and P are the open
streams and the paced phase, Assistants streams too."""


# -- /proc ---------------------------------------------------------------------------------------


def cpu_times(pid: int, reaped: bool = False) -> tuple[float, float]:
    """CPU seconds (user + system) of the whole process and of its main (event-loop) thread. With
    ``reaped``, the first also counts its children that have exited and been waited for."""

    def read(path: str, n: int) -> float:
        stat = Path(path).read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return sum(int(v) for v in fields[11 : 11 + n]) / CLK_TCK  # utime stime [cutime cstime]

    return read(f"/proc/{pid}/stat", 4 if reaped else 2), read(f"/proc/{pid}/task/{pid}/stat", 2)


def child_pids(pid: int) -> list[int]:
    """The processes a (single-threaded) process has forked and not yet reaped."""
    with contextlib.suppress(OSError):
        return [int(v) for v in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    out = []  # a kernel without CONFIG_PROC_CHILDREN: scan for the parent pid
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (Linux: write 5 to clear_refs), to take a phase's peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class OtherLoad:
    """CPU used on the machine by anything but the benchmark's own processes: noise to report."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.perf_counter()
        self.start = self._split()

    def _split(self) -> tuple[float, float]:
        ours = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                ours += cpu_times(pid)[0]
        return machine_busy_s(), ours

    def cores(self) -> float:
        """Average number of CPUs the rest of the machine kept busy since the start."""
        busy, ours = self._split()
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.start[0]) - (ours - self.start[1])) / wall if wall > 0 else 0.0


async def settle(child: Child, deadline_s: float = 30.0) -> float:
    """Wait until the process (with its workers) is idle; return how long it stayed busy (resolution
    QUIET_WINDOW_S)."""
    start = time.perf_counter()
    while True:
        before = child.cpu()[0]
        t = time.perf_counter()
        await asyncio.sleep(QUIET_WINDOW_S)
        if child.cpu()[0] - before <= QUIET_TICKS / CLK_TCK + 1e-9:
            return t - start
        if time.perf_counter() - start > deadline_s:
            return float("inf")


# -- child processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    admin_url: str = ""
    forks: bool = False
    """It serves from worker processes it forks (nginx): their CPU is its CPU."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return [self.pid, *child_pids(self.pid)] if self.forks else [self.pid]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the process, and of its main thread; for a forking server the sums over
        the master and its workers (a worker that exited counts through the master's cutime)."""
        if not self.forks:
            return cpu_times(self.pid)
        total, main = cpu_times(self.pid, reaped=True)
        for pid in child_pids(self.pid):
            with contextlib.suppress(OSError):
                worker = cpu_times(pid)
                total += worker[0]
                main += worker[1]
        return total, main

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn(name: str, argv: list[str], tmp: Path) -> Child:
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTAP_")}
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    return Child(name, proc, log)


async def start_upstream(tmp: Path, name: str, relay_to: str | None = None) -> Child:
    port_file = tmp / f"{name}.port"
    argv = [PYTHON, str(ROOT / "scripts" / "bench_upstream.py"), "--listen", f"{HOST}:0",
            "--port-file", str(port_file)]
    if relay_to:
        argv += ["--relay-to", relay_to]
    child = spawn(name, argv, tmp)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"{name} did not start:\n{child.tail()}")
        await asyncio.sleep(0.05)
    child.url = f"http://{HOST}:{int(port_file.read_text())}"
    return child


async def wait_port(child: Child, port: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        with contextlib.suppress(OSError):
            _reader, writer = await asyncio.open_connection(HOST, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} not listening on {port} after {deadline_s:.0f}s:\n{child.tail()}")


async def wait_healthy(session: aiohttp.ClientSession, child: Child, url: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{child.name} not healthy after {deadline_s:.0f}s:\n{child.tail()}")


async def start_proxy(session: aiohttp.ClientSession, tmp: Path, upstream: str, db: Path,
                      config: str | None, name: str = "proxy") -> Child:
    for _attempt in range(3):  # a picked port can be taken before the proxy binds it
        port, admin = free_port(), free_port()
        argv = [PYTHON, "-m", "proxy", "--upstream", upstream, "--listen", f"{HOST}:{port}",
                "--admin-listen", f"{HOST}:{admin}", "--db", str(db)]
        if config:
            argv += ["--config", config]
        child = spawn(name, argv, tmp)
        try:
            # /readyz: recording is up. The admin listener binds before the proxy port, which opens
            # when startup ends, so also wait until that port accepts (else the first requests fail).
            await wait_healthy(session, child, f"http://{HOST}:{admin}/readyz")
            await wait_port(child, port)
        except RuntimeError:
            child.kill()
            if "address already in use" in child.tail().lower():
                continue
            raise
        child.url = f"http://{HOST}:{port}"
        child.admin_url = f"http://{HOST}:{admin}"
        return child
    raise RuntimeError("could not find free ports for the proxy")


def stop_proxy(child: Child, timeout: float = 120) -> dict[str, Any]:
    """SIGTERM (drain, flush the recording, exit 0) and time it."""
    t = time.perf_counter()
    child.proc.send_signal(signal.SIGTERM)
    try:
        code = child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        code = child.proc.wait(5)
        return {"exit_code": code, "shutdown_s": None, "killed": True}
    return {"exit_code": code, "shutdown_s": time.perf_counter() - t, "killed": False}


NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx(explicit: str | None) -> tuple[str | None, str]:
    """The nginx binary (not always on a non-root PATH: Debian's is /usr/sbin/nginx) and its
    version, or None and why not."""
    binary = explicit or shutil.which("nginx") or next((b for b in NGINX_PATHS if os.access(b, os.X_OK)), None)
    if binary is None:
        return None, "not installed (`make nginx` installs Debian's package)"
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{binary} does not run: {e}"
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    if out.returncode != 0 or match is None:
        return None, f"{binary} -v failed: {(out.stderr + out.stdout).strip()[:200]}"
    return binary, match.group(1)


def nginx_config(tmp: Path, port: int, upstream_port: int) -> str:
    """nginx as a plain streaming reverse proxy to the fast upstream, tuned as one would in front of
    an SSE API: keep-alive both ways, responses relayed as they arrive, nothing logged per request."""
    d = tmp / "nginx"
    user = "user root;  # else the workers drop to nobody, who cannot enter the bench's private temp dir\n" if (
        os.geteuid() == 0) else ""
    return f"""# Generated by scripts/bench.py for one run.
# One worker process: runtap is one process (one event loop), so each gets one CPU to relay with.
worker_processes 1;
{user}pid {d}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;          # no limit, as the floor and runtap
    client_body_buffer_size 1m;      # request bodies stay in memory
    keepalive_requests 1000000;      # the client's keep-alive connections are not recycled
    keepalive_timeout 75s;

    # proxy_pass to the address itself would open a new connection per request: nginx keeps
    # upstream connections alive only through an upstream block.
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://bench_upstream;   # = http://127.0.0.1:{upstream_port}
            proxy_http_version 1.1;
            proxy_set_header Connection "";     # keep the upstream connection alive
            proxy_buffering off;                # SSE: each event is relayed as it arrives
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


async def start_nginx(session: aiohttp.ClientSession, tmp: Path, binary: str, version: str,
                      upstream: str) -> Child:
    """nginx in the foreground (``daemon off``) as a child process, on a free loopback port."""
    upstream_port = int(upstream.rsplit(":", 1)[1])
    (tmp / "nginx").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    # -e (1.19.5+): the error log before the config is read, else the compiled-in path.
    early_log = ["-e", str(tmp / "nginx-error.log")] if tuple(map(int, re.findall(r"\d+", version)[:3])) >= (
        1, 19, 5) else []
    for _attempt in range(3):  # a picked port can be taken before nginx binds it
        port = free_port()
        conf.write_text(nginx_config(tmp, port, upstream_port))
        child = spawn("nginx", [binary, "-p", str(tmp / "nginx"), *early_log, "-c", str(conf), "-g", "daemon off;"],
                      tmp)
        child.forks = True
        url = f"http://{HOST}:{port}"
        try:
            await wait_port(child, port)
            # Through nginx to the upstream: a worker is up and the proxying works.
            await wait_healthy(session, child, url + "/bench/info")
        except RuntimeError:
            child.kill()
            if "address already in use" in child.tail().lower():
                continue
            raise
        except BaseException:
            child.kill()
            raise
        child.url = url
        return child
    raise RuntimeError("could not find a free port for nginx")


# -- load ------------------------------------------------------------------------------------------


@dataclass
class Samples:
    latency: array[float] = field(default_factory=lambda: array("d"))
    ttfe: array[float] = field(default_factory=lambda: array("d"))
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0
    drain_s: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    """The recorder's queue depth, sampled during the rounds (when the proxy exposes it)."""
    queue_after: list[float] = field(default_factory=list)
    """The queue depth right after each round: the backlog the recorder still had."""

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(what)


@dataclass(frozen=True)
class StreamKind:
    """A streamed request the load sends, and what must come back for it to count as OK."""

    path: str
    body: bytes
    headers: dict[str, str]
    first: bytes
    """The time to first event is when the first body chunk holding this arrives."""
    size: int
    tail: bytes
    events: int


class Load:
    """Issues the benchmark's requests; every request carries a 20-character token that the
    upstream puts in its ids, so the recording can be checked request by request."""

    def __init__(self, session: aiohttp.ClientSession, info: dict[str, Any]) -> None:
        self.session = session
        self.info = info
        self.counter = itertools.count()
        self.sent_by_tag: dict[str, int] = {}
        self.stream_body = json.dumps(info["stream_request"]).encode()
        self.placeholder = info["placeholder"]
        json_headers = {"Authorization": BASE_HEADERS["Authorization"], "Content-Type": "application/json"}
        self.streams = {"stream": StreamKind("/v1/threads/runs", self.stream_body,
                                             {**BASE_HEADERS, "Content-Type": "application/json"}, b"event:",
                                             info["stream_bytes"], b"data: [DONE]\n\n", info["events"])}
        for kind in API_STREAMS:
            k = info[kind]
            # Responses frames start with `event:`, Chat frames with `data: ` (no event name, §9).
            self.streams[kind] = StreamKind(k["path"], json.dumps(k["request"]).encode(), json_headers,
                                            b"event:" if kind == "responses" else b"data: ", k["stream_bytes"],
                                            k["tail"].encode(), k["events"])

    def token(self, tag: str) -> str:
        self.sent_by_tag[tag] = self.sent_by_tag.get(tag, 0) + 1
        return f"{tag}{next(self.counter):016d}"

    async def stream(self, base: str, tag: str, s: Samples, hold: bool = False,
                     on_first: Callable[[], None] | None = None, kind: str = "stream") -> None:
        k = self.streams[kind]
        headers = {**k.headers, "x-bench-token": self.token(tag)}
        if hold:
            headers["x-bench-hold"] = "1"
        s.sent += 1
        t0 = time.perf_counter()
        first = 0.0
        size = 0
        tail = b""
        marker = k.first
        try:
            async with self.session.post(base + k.path, data=k.body, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    if not first and marker in chunk:
                        first = time.perf_counter()
                        if on_first is not None:
                            on_first()
                    size += len(chunk)
                    tail = chunk[-16:] if len(chunk) >= 16 else (tail + chunk)[-16:]
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            s.error(f"{type(e).__name__}: {e}")
            return
        t1 = time.perf_counter()
        if status != 200 or size != k.size or not tail.endswith(k.tail):
            s.error(f"status {status}, {size} bytes, tail {tail!r}")
            return
        s.ok += 1
        s.latency.append(t1 - t0)
        s.ttfe.append(first - t0)

    async def json_run(self, base: str, tag: str, s: Samples) -> None:
        token = self.token(tag)
        path = self.info["run_path"].replace(self.placeholder, token)
        headers = {**BASE_HEADERS, "x-bench-token": token}
        s.sent += 1
        t0 = time.perf_counter()
        try:
            async with self.session.get(base + path, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            s.error(f"{type(e).__name__}: {e}")
            return
        t1 = time.perf_counter()
        if status != 200 or len(body) != self.info["json_bytes"]:
            s.error(f"status {status}, {len(body)} bytes")
            return
        s.ok += 1
        s.latency.append(t1 - t0)

    async def round(self, kind: str, base: str, tag: str, n: int, concurrency: int, s: Samples,
                    limit_s: float) -> None:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                if kind == "json":
                    await self.json_run(base, tag, s)
                else:
                    await self.stream(base, tag, s, kind=kind)

        gc.collect()
        gc.disable()  # the client's own collector pauses would land on whichever target runs
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), limit_s)
        except TimeoutError:
            s.error(f"round timed out after {limit_s:.0f}s with {remaining} requests not started")
            s.errors += max(0, remaining - 1)
        finally:
            s.wall_s += time.perf_counter() - t0
            gc.enable()


# -- statistics ------------------------------------------------------------------------------------


def pct(values: array[float] | list[float], q: float) -> float | None:
    if len(values) < 2:
        return values[0] * 1000 if values else None
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[round(q * 1000) - 1] * 1000


def summary(s: Samples) -> dict[str, Any]:
    return {
        "requests": s.sent, "ok": s.ok, "errors": s.errors, "error_examples": s.error_examples,
        "wall_s": s.wall_s, "rps": s.ok / s.wall_s if s.wall_s else None,
        "p50_ms": pct(s.latency, 0.5), "p99_ms": pct(s.latency, 0.99),
        "ttfe_p50_ms": pct(s.ttfe, 0.5), "ttfe_p99_ms": pct(s.ttfe, 0.99),
        "cpu_ms_per_req": s.cpu_s * 1000 / s.ok if s.ok and s.cpu_s else None,
        "loop_cpu_ms_per_req": s.loop_cpu_s * 1000 / s.ok if s.ok and s.cpu_s else None,
        "max_drain_s": max(s.drain_s) if s.drain_s else None, "drain_total_s": sum(s.drain_s),
        "max_queue": max(s.queue + s.queue_after) if s.queue or s.queue_after else None,
        "max_queue_after_round": max(s.queue_after) if s.queue_after else None,
    }


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def queue_trend(depths: list[tuple[float, float]]) -> dict[str, Any]:
    """The queue's samples (time, rows) summed up: the largest in each quarter of the run and the
    least-squares slope (rows per second). A queue that keeps up saws between empty and one batch;
    one that does not grows by (offered - written) rows every second."""
    if len(depths) < 4:
        return {"samples": len(depths), "quarter_max": [], "slope_rows_per_s": None, "max": None}
    end = depths[-1][0]
    quarters = [max((d for t, d in depths if q * end / 4 <= t <= (q + 1) * end / 4), default=0.0) for q in range(4)]
    mean_t = statistics.fmean(t for t, _ in depths)
    mean_d = statistics.fmean(d for _, d in depths)
    var = sum((t - mean_t) ** 2 for t, _ in depths)
    slope = sum((t - mean_t) * (d - mean_d) for t, d in depths) / var if var else None
    return {"samples": len(depths), "quarter_max": quarters, "slope_rows_per_s": slope,
            "max": max(d for _, d in depths)}


class QueueProbe:
    """The recorder's queue depth from the admin listener's /metrics, if the proxy exposes it there
    (gauge ``runtap_recorder_queue_depth``); disabled at the first answer without it."""

    METRIC = re.compile(rb"^runtap_recorder_queue_depth(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)
    PERIOD_S = 0.25

    def __init__(self, session: aiohttp.ClientSession, admin_url: str) -> None:
        self.session = session
        self.url = admin_url + "/metrics"
        self.available = bool(admin_url)

    async def depth(self) -> float | None:
        if not self.available:
            return None
        try:
            async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        match = self.METRIC.search(body) if status == 200 else None
        if match is None:
            self.available = False
            return None
        return float(match.group(1))

    async def watch(self, out: list[float]) -> None:
        """Sample until cancelled."""
        while self.available:
            depth = await self.depth()
            if depth is not None:
                out.append(depth)
            await asyncio.sleep(self.PERIOD_S)


# -- the phases ------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    load: Load
    upstream: Child
    proxy: Child
    floor: Child | None
    probe: QueueProbe
    extra: list[tuple[str, Child]] = field(default_factory=list)
    nginx: Child | None = None

    def targets(self) -> list[tuple[str, str, Child | None]]:
        out: list[tuple[str, str, Child | None]] = [("direct", self.upstream.url, None)]
        if self.nginx is not None:
            out.append(("nginx", self.nginx.url, self.nginx))
        if self.floor is not None:
            out.append(("floor", self.floor.url, self.floor))
        out.append(("runtap", self.proxy.url, self.proxy))
        out += [(name, child.url, child) for name, child in self.extra]
        return out

    def pids(self) -> list[int]:
        children = (self.upstream, self.proxy, self.floor, self.nginx, *(c for _, c in self.extra))
        return [os.getpid()] + [pid for c in children if c is not None for pid in c.pids()]

    async def drained(self, child: Child) -> float:
        """Seconds until a process has written what it queued and is idle. For a proxy, first until
        its recorder's queue is empty: the writer takes a batch when the batch is due (up to the batch
        interval after its first row), and a quiet CPU window alone would end before that write."""
        start = time.perf_counter()
        if child.admin_url:
            probe = QueueProbe(self.load.session, child.admin_url)
            while time.perf_counter() - start < 60:
                depth = await probe.depth()
                if not depth:  # 0, or the proxy has no queue gauge
                    break
                await asyncio.sleep(0.05)
        waited = time.perf_counter() - start
        return waited + await settle(child)

    async def scenario(self, kind: str, concurrency: int, n: int) -> dict[str, Any]:
        args = self.args
        other = OtherLoad(self.pids())
        peak_ok = reset_peak_rss(self.proxy.pid)
        letter = KIND_LETTERS[kind]
        samples = {name: Samples() for name, _, _ in self.targets()}
        for name, base, child in self.targets():  # warm-up: connections, caches, the proxy's pools
            await self.load.round(kind, base, f"{letter.lower()}{concurrency:02d}{name[0]}", args.warmup,
                                  concurrency, Samples(), args.phase_timeout)
            if child is not None:
                await self.drained(child)
        per_round = [n // args.rounds + (1 if i < n % args.rounds else 0) for i in range(args.rounds)]
        for i, count in enumerate(per_round):
            order = self.targets() if i % 2 == 0 else self.targets()[::-1]
            for name, base, child in order:
                s = samples[name]
                tag = f"{letter}{concurrency:02d}{name[0].upper()}"
                before = child.cpu() if child else (0.0, 0.0)
                watch = asyncio.ensure_future(self.probe.watch(s.queue)) if child is self.proxy else None
                await self.load.round(kind, base, tag, count, concurrency, s, args.phase_timeout)
                if watch is not None:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
                    depth = await self.probe.depth()
                    if depth is not None:
                        s.queue_after.append(depth)
                if child is not None:
                    # Until the proxy is idle again: the writer's share of this round counts too.
                    s.drain_s.append(await self.drained(child))
                    after = child.cpu()
                    s.cpu_s += after[0] - before[0]
                    s.loop_cpu_s += after[1] - before[1]
        mem = memory_kb(self.proxy.pid)
        out: dict[str, Any] = {"kind": kind, "concurrency": concurrency, "tag": f"{letter}{concurrency:02d}R",
                               "other_load_cores": other.cores(), "rss_after_mb": mem["VmRSS"] / 1024,
                               "rss_peak_mb": mem["VmHWM"] / 1024 if peak_ok else None}
        for name, s in samples.items():
            out[name] = summary(s)
        direct = out["direct"]
        for name in samples:
            if name == "direct":
                continue
            r = out[name]
            r["added_p50_ms"] = diff(r["p50_ms"], direct["p50_ms"])
            r["added_p99_ms"] = diff(r["p99_ms"], direct["p99_ms"])
            r["added_ttfe_p50_ms"] = diff(r["ttfe_p50_ms"], direct["ttfe_p50_ms"])
            r["added_ttfe_p99_ms"] = diff(r["ttfe_p99_ms"], direct["ttfe_p99_ms"])
            r["throughput_ratio"] = r["rps"] / direct["rps"] if r["rps"] and direct["rps"] else None
        return out

    async def paced(self, events_per_s: float, duration_s: float) -> dict[str, Any]:
        """Streamed runs through runtap started on a fixed schedule (open loop, not back to back), so
        that it is offered ``events_per_s`` events a second: the recorder's target, measured in place."""
        pid = self.proxy.pid
        runs_per_s = events_per_s / self.load.info["events"]
        n = max(1, round(runs_per_s * duration_s))
        s = Samples()
        depths: list[tuple[float, float]] = []
        await self.drained(self.proxy)
        other = OtherLoad(self.pids())
        before = cpu_times(pid)
        t0 = time.perf_counter()

        async def sample() -> None:
            # Every 0.1 s, not QueueProbe.PERIOD_S: 0.25 s is the writer's batch interval, and samples
            # in step with it would keep landing on the same point of each batch's rise and fall.
            while self.probe.available:
                depth = await self.probe.depth()
                if depth is not None:
                    depths.append((time.perf_counter() - t0, depth))
                await asyncio.sleep(PACED_SAMPLE_S)

        watcher = asyncio.ensure_future(sample())
        tasks: list[asyncio.Future[None]] = []
        late = most_open = 0
        for i in range(n):
            delay = t0 + i / runs_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1  # started more than 50 ms behind its schedule: the machine could not keep up
            tasks.append(asyncio.ensure_future(self.load.stream(self.proxy.url, "P00R", s)))
            if i % 16 == 0:
                most_open = max(most_open, sum(not t.done() for t in tasks[-64:]))
        await asyncio.gather(*tasks)  # every task's outcome retrieved: an unexpected exception surfaces
        wall = time.perf_counter() - t0
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        after_depth = await self.probe.depth()
        drain = await self.drained(self.proxy)
        after = cpu_times(pid)
        return {
            "events_per_s_offered": events_per_s, "duration_s": duration_s, "runs": n, "ok": s.ok,
            "errors": s.errors, "error_examples": s.error_examples, "wall_s": wall,
            "events_per_s": s.ok * self.load.info["events"] / wall, "late_starts": late, "most_open": most_open,
            "p50_ms": pct(s.latency, 0.5), "p99_ms": pct(s.latency, 0.99),
            "cpu_ms_per_run": (after[0] - before[0]) * 1000 / s.ok if s.ok else None,
            "loop_cpu_ms_per_run": (after[1] - before[1]) * 1000 / s.ok if s.ok else None,
            "queue": queue_trend(depths), "queue_at_end": after_depth, "drain_s": drain,
            "other_load_cores": other.cores(),
        }

    async def open_streams(self, n: int) -> dict[str, Any]:
        """n streams through the proxy at once; the upstream holds each after its first events."""
        pid = self.proxy.pid
        s = Samples()
        opened = 0
        all_open = asyncio.Event()

        def on_first() -> None:
            nonlocal opened
            opened += 1
            if opened == n:
                all_open.set()

        # A few recorded streams first, so that DuckDB's and the pools' one-time allocations are not
        # counted as the cost of holding streams open.
        await self.load.round("stream", self.proxy.url, "h00r", self.args.warmup, 8, Samples(), self.args.phase_timeout)
        await self.drained(self.proxy)
        base = {"rss_before_mb": memory_kb(pid)["VmRSS"] / 1024, "fds_before": open_fds(pid)}
        other = OtherLoad(self.pids())
        peak_ok = reset_peak_rss(pid)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=self.args.phase_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            load = Load(session, self.load.info)
            load.counter = self.load.counter
            load.sent_by_tag = self.load.sent_by_tag
            t0 = time.perf_counter()
            tasks = []
            for i in range(n):
                tasks.append(asyncio.ensure_future(load.stream(self.proxy.url, "H00R", s, True, on_first)))
                if i % 100 == 99:
                    await asyncio.sleep(0.02)  # a ramp, not a SYN flood into a 128-entry backlog
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), 60)
            open_s = time.perf_counter() - t0
            async with session.get(self.upstream.url + "/bench/held") as resp:
                held = (await resp.json())["held"]
            samples = []
            for _ in range(10):
                samples.append(memory_kb(pid))
                await asyncio.sleep(0.1)
            top = max(samples, key=lambda m: m["VmRSS"])
            fds = open_fds(pid)
            async with session.post(self.upstream.url + "/bench/release") as resp:
                await resp.read()
            await asyncio.gather(*tasks)
            done_s = time.perf_counter() - t0
        drain = await self.drained(self.proxy)
        mem = memory_kb(pid)
        return {
            **base, "streams": n, "opened": opened, "held_by_upstream": held, "open_s": open_s,
            "completed": s.ok, "errors": s.errors, "error_examples": s.error_examples,
            "rss_open_max_mb": top["VmRSS"] / 1024, "rss_open_file_mb": top["RssFile"] / 1024, "fds_open": fds,
            "total_s": done_s, "drain_s": drain,
            "rss_after_mb": mem["VmRSS"] / 1024, "rss_peak_mb": mem["VmHWM"] / 1024 if peak_ok else None,
            "other_load_cores": other.cores(),
        }


def _tag_of(column: str) -> str:
    """SQL for the request tag in an id the fast upstream made: the first 4 characters of its token,
    after `run_` (Assistants) or `chatcmpl-` (Chat), or hex-encoded after `resp_` (Responses)."""
    return (f"case when starts_with({column}, 'resp_') then try(decode(unhex(substr({column}, 6, 8))))"
            f" when starts_with({column}, 'chatcmpl-') then substr({column}, 10, 4) else substr({column}, 5, 4) end")


def count_recorded(db: Path, info: dict[str, Any], sent_by_tag: dict[str, int]) -> dict[str, Any]:
    """Rows per request tag in the recording (read-only, after the proxy has exited)."""
    import duckdb

    tag = _tag_of("run_id")
    # Each kind's run (an Assistants run, a Responses or Chat turn) has the total its upstream reported.
    usage = (f"(api = 'assistants' and total_tokens = {int(info['total_tokens'])})"
             f" or (api = 'responses' and total_tokens = {int(info['responses']['total_tokens'])})"
             f" or (api = 'chat' and total_tokens = {int(info['chat']['total_tokens'])})")
    con = duckdb.connect(str(db), read_only=True)
    try:
        def by_tag(sql: str, *params: Any) -> dict[str, tuple[Any, ...]]:
            return {row[0]: row[1:] for row in con.execute(sql, list(params)).fetchall()}

        events = by_tag(f"select {tag}, count(*), count(distinct request_id) from events group by 1")
        requests = by_tag(f"select {tag}, count(*), count(*) filter (where outcome = 'completed')"
                          " from requests group by 1")
        runs = by_tag(f"select {tag}, count(*), count(*) filter (where status = 'completed'),"
                      f" count(*) filter (where {usage}) from runs group by 1")
        # The answer: an Assistants message, the Chat completion's message, or the Response's message item.
        messages = by_tag(f"select {tag}, count(*) from messages where status = 'completed' and text = ? group by 1",
                          info["answer"])
        items = by_tag(f"select {_tag_of('response_id')}, count(*) from response_items"
                       " where source = 'output' and type = 'message' and status = 'completed' and text = ?"
                       " group by 1", info["answer"])
        responses = by_tag(f"select {_tag_of('response_id')}, count(*), count(*) filter (where status = 'completed'),"
                           f" count(*) filter (where total_tokens = {int(info['responses']['total_tokens'])})"
                           " from responses group by 1")
        (orphans,) = con.execute("select count(*) from events where run_id is null").fetchone() or (0,)
        (no_run,) = con.execute("select count(*) from requests where run_id is null").fetchone() or (0,)
    finally:
        con.close()
    spill = Path(f"{db}.spill.jsonl")
    out: dict[str, Any] = {"events_without_run_id": orphans, "requests_without_run_id": no_run, "tags": {},
                           "spill": f"{spill.stat().st_size} bytes" if spill.exists() else "none"}
    per_stream = {"S": info["events"], "H": info["events"], "P": info["events"],
                  "R": info["responses"]["events"], "C": info["chat"]["events"]}
    for tag, sent in sorted(sent_by_tag.items()):
        if tag[-1] not in "Rr":  # only requests that went through runtap are recorded
            continue
        letter = tag[0].upper()
        streamed = letter in per_stream
        ev, rq, rn = events.get(tag, (0, 0)), requests.get(tag, (0, 0)), runs.get(tag, (0, 0, 0))
        rs = responses.get(tag, (0, 0, 0))
        out["tags"][tag] = {
            "sent": sent,
            # Every SSE frame is an event row: a Responses stream has no [DONE], a Chat stream's counts.
            "events_expected": sent * per_stream[letter] if streamed else 0,
            "messages_expected": sent if streamed else 0,
            "messages_ok": items.get(tag, (0,))[0] if letter == "R" else messages.get(tag, (0,))[0],
            "events": ev[0], "event_streams": ev[1],
            "requests": rq[0], "requests_completed": rq[1],
            "runs": rn[0], "runs_completed": rn[1], "runs_with_usage": rn[2],
            "responses_expected": sent if letter == "R" else 0,
            "responses": rs[0], "responses_completed": rs[1], "responses_with_usage": rs[2],
        }
    return out


async def writer_bench(rows_n: int, rate: float, tmp: Path, frames: list[bytes], placeholder: str) -> dict[str, Any]:
    """store.Writer alone, fed the benchmark's streams as the recorder hands them over (their bytes)."""
    from proxy.exchange import StreamBytes
    from proxy.record.writer import Writer

    now = time.time()
    key = placeholder.encode()
    streams: list[tuple[str, str, StreamBytes]] = []
    for stream in range(max(1, rows_n // len(frames))):
        token = f"W{stream:019d}".encode()
        chunks = [frame.replace(key, token) for frame in frames]
        streams.append((f"rt_{stream:032x}", f"run_{token.decode()}xxxx",
                        StreamBytes(0, chunks, [now + i * 1e-4 for i in range(len(chunks))], True)))
    rows_n = len(streams) * len(frames)
    out: dict[str, Any] = {"rows": rows_n, "bytes_per_row": sum(map(len, frames)) / len(frames)}
    for label, pace in (("unpaced", 0.0), ("paced", rate)):
        out[label] = await _writer_run(Writer(tmp / f"writer-{label}.duckdb"), streams, rows_n, pace)
    return out


class _Probe:
    """Samples the writer's queue depth and the event loop's lag every 5 ms."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.max_depth = 0
        self.max_lag_s = 0.0
        self.running = True

    async def run(self) -> None:
        while self.running:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.max_lag_s = max(self.max_lag_s, time.perf_counter() - t - 0.005)
            self.max_depth = max(self.max_depth, self.writer.queue_depth)


async def _writer_run(writer: Any, streams: list[tuple[str, str, Any]], rows_n: int, pace: float) -> dict[str, Any]:
    """`pace`: events per second offered (0: as fast as the loop submits)."""
    await asyncio.to_thread(writer.start)
    probe = _Probe(writer)
    task = asyncio.ensure_future(probe.run())
    per_stream = rows_n // len(streams)
    t0 = time.perf_counter()
    for i, (request_id, run_id, segment) in enumerate(streams):
        writer.submit_stream(request_id, run_id, segment)  # as the recorder hands a stream over
        if pace:
            await asyncio.sleep(max(0.0, t0 + (i + 1) * per_stream / pace - time.perf_counter()))
        elif i % 2 == 1:
            await asyncio.sleep(0)
    submitted = time.perf_counter() - t0
    await writer.flush()
    elapsed = time.perf_counter() - t0
    probe.running = False
    await task
    cur = writer.cursor()
    (count,) = cur.execute("select count(*) from events").fetchone() or (0,)
    cur.close()
    await asyncio.to_thread(writer.close)
    return {"rows_per_s": rows_n / elapsed, "submit_s": submitted, "elapsed_s": elapsed,
            "flush_lag_s": elapsed - submitted, "max_queue_depth": probe.max_depth,
            "max_loop_stall_ms": probe.max_lag_s * 1000, "rows_in_db": count, "spilled": writer.spilled_rows_total}


# -- report ----------------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if v == float("inf"):
        return "∞"
    return f"{v:,.{digits}f}{unit}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def le(v: float | None, limit: float) -> bool | None:
    return None if v is None else v <= limit


def ge(v: float | None, limit: float) -> bool | None:
    return None if v is None else v >= limit


def machine() -> dict[str, Any]:
    import duckdb

    try:
        import uvloop
    except ImportError:
        uvloop_version = "not installed"
    else:
        uvloop_version = uvloop.__version__
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": model, "kernel": platform.release(),
        "python": platform.python_version(), "aiohttp": aiohttp.__version__, "uvloop": uvloop_version,
        "duckdb": duckdb.__version__, "runtap": _runtap_version(), "git": _git_head(),
    }


def _runtap_version() -> str:
    from proxy import __version__

    return str(__version__)


def _git_head() -> str:
    """The commit, and a hash of uncommitted changes to it (what was measured, exactly)."""
    try:
        head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "proxy"], cwd=ROOT, capture_output=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if not head:
        return "not a git checkout"
    if diff:
        head += f", proxy/ diff sha256 {hashlib.sha256(diff).hexdigest()[:12]}"
    return head or "?"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "## runtap benchmark",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; Python {m['python']}, aiohttp "
        f"{m['aiohttp']}, uvloop {m['uvloop']}, duckdb {m['duckdb']}; runtap {m['runtap']} ({m['git']})",
        f"- Command: `{r['command']}`",
        f"- Date: {r['date']}; wall time {r['wall_s']:.0f} s",
        f"- Load: {r['setup']}",
        f"- Other load on the machine during the run (CPUs kept busy by processes outside the benchmark): "
        f"{r['other_load_cores']:.2f}" + (" — WARNING: figures are disturbed" if r["other_load_cores"] > 0.1 else ""),
        "",
    ]
    sc = {(x["kind"], x["concurrency"]): x for x in r["scenarios"]}
    # Reported in KINDS order (the streams side by side), whatever order they ran in.
    scenarios = sorted(r["scenarios"], key=lambda x: (KINDS.index(x["kind"]), x["concurrency"]))
    rows: list[tuple[str, str, str, str]] = []

    def add(metric: str, value: str, target: str, ok: bool | None) -> None:
        rows.append((metric, value, target, verdict(ok)))

    hi = r["config"]["high_concurrency"]
    for kind in KINDS:
        for c in (1, hi):
            x = sc.get((kind, c))
            if x is None:
                continue
            p = x["runtap"]
            limit = TARGETS["added_p50_c1_ms"] if c == 1 else TARGETS["added_p50_c32_ms"]
            add(f"Added p50 latency, {kind}, c={c}", fmt(p["added_p50_ms"], " ms"), f"≤ {limit} ms",
                le(p["added_p50_ms"], limit))
            add(f"Added p99 latency, {kind}, c={c}", fmt(p["added_p99_ms"], " ms"), "—", None)
            if kind != "json":
                # The Assistants stream's row keeps its name (no kind): earlier reports compare with it.
                add(f"Added time to first event p50 / p99, {'' if kind == 'stream' else kind + ', '}c={c}",
                    f"{fmt(p['added_ttfe_p50_ms'], ' ms')} / {fmt(p['added_ttfe_p99_ms'], ' ms')}", "—", None)
            ratio = p["throughput_ratio"]
            add(f"Throughput vs direct, {kind}, c={c}", fmt(ratio, "x"),
                f"≥ {TARGETS['throughput_ratio_c32']}x" if c == hi else "—",
                ge(ratio, TARGETS["throughput_ratio_c32"]) if c == hi else None)
            add(f"Proxy CPU per request, {kind}, c={c} (event-loop thread)",
                f"{fmt(p['cpu_ms_per_req'], ' ms', 3)} ({fmt(p['loop_cpu_ms_per_req'], ' ms', 3)})", "—", None)
    for x in r["scenarios"]:
        if not all(n in x for n in OBSERVABILITY_TARGETS):
            continue
        plain, traced = x["plain"], x["traced"]
        cost = diff(traced["p50_ms"], plain["p50_ms"])
        limit = TARGETS["observability_p50_ms"]
        add(f"Observability (metrics + tracing exported) on vs off, added p50, {x['kind']} c={x['concurrency']}; "
            "CPU per request",
            f"{fmt(cost, ' ms')}; {fmt(diff(traced['cpu_ms_per_req'], plain['cpu_ms_per_req']), ' ms', 3)}",
            f"≤ {limit} ms" if x["concurrency"] == 1 else "—", le(cost, limit) if x["concurrency"] == 1 else None)
    rec = r.get("recording", {})
    pc = r.get("paced")
    if pc:
        q = pc["queue"]
        rise = None if q["slope_rows_per_s"] is None else q["slope_rows_per_s"] * pc["wall_s"]
        kept_up = rise is not None and rise <= WRITER_MAX_DEPTH and pc["drain_s"] <= PACED_BUSY_S
        delivered = pc["events_per_s"] >= 0.97 * pc["events_per_s_offered"] and pc["errors"] == 0
        # n/a rather than a verdict when the proxy exposes no queue depth, or less than the target's
        # rate was offered (then the phase says nothing about the target either way).
        judged = rise is not None and pc["events_per_s_offered"] >= TARGETS["recorder_events_per_s"]
        add(f"Recorder inside runtap at a paced {pc['events_per_s_offered']:,.0f} events/s ({pc['runs']:,} streamed "
            f"runs over {pc['wall_s']:.0f} s): events relayed and recorded per second; the queue's rise over the run "
            "(least-squares trend); its largest depth; time busy after the last run",
            f"{fmt(pc['events_per_s'], '/s', 0)}; {fmt(rise, ' rows', 0)}; {fmt(q['max'], ' rows', 0)}; "
            f"{fmt(pc['drain_s'], ' s', 1)}",
            f"≥ {TARGETS['recorder_events_per_s']:,}/s, the queue not growing (rise ≤ {WRITER_MAX_DEPTH:,} rows, "
            f"busy ≤ {PACED_BUSY_S} s after)",
            (kept_up and delivered) if judged else None)
    e2e = rec.get("stream_high")
    if e2e:
        queue_after = e2e["max_queue_after_round"]
        queue = "" if e2e["max_queue"] is None else (
            f"; queue up to {e2e['max_queue']:,.0f} rows, {queue_after:,.0f} at a round's end")
        # Informational: back to back at c=32 the proxy is offered far more than the target's rate
        # (~50,000 events/s); the paced row above measures the target itself.
        add(f"Recorder inside runtap, stream c={hi} back to back: events recorded per second, counting the "
            "catch-up after each round; time the proxy stayed busy after a round (its backlog)",
            f"{fmt(e2e['events_per_s'], '/s', 0)}; busy up to {fmt(e2e['max_drain_s'], ' s', 1)}{queue}",
            "—", None)
    wb = r.get("writer")
    if wb:
        paced = wb["paced"]
        ok = wb["unpaced"]["rows_per_s"] >= TARGETS["recorder_events_per_s"] and paced["max_queue_depth"] <= (
            WRITER_MAX_DEPTH) and paced["rows_per_s"] >= 0.97 * r["config"]["writer_rate"]
        add("Recorder capacity (store.Writer alone): unpaced rows/s; max queue at a paced "
            f"{r['config']['writer_rate']:,.0f} rows/s",
            f"{fmt(wb['unpaced']['rows_per_s'], '/s', 0)}; depth ≤ {paced['max_queue_depth']:,} rows, "
            f"flushed {fmt(paced['flush_lag_s'] * 1000, ' ms', 0)} after the last submit",
            f"≥ {TARGETS['recorder_events_per_s']:,}/s, queue ≤ {WRITER_MAX_DEPTH:,}", ok)
    if rec:
        lost = rec["events_expected"] - rec["events"]
        responses = (f"; {rec['responses']:,} / {rec['responses_expected']:,} responses"
                     if rec["responses_expected"] else "")
        add("Recording complete (events, requests, runs, answers of every proxied request)",
            f"{rec['events']:,} / {rec['events_expected']:,} events; {rec['requests']:,} / {rec['sent']:,} "
            f"requests; {rec['runs']:,} / {rec['sent']:,} runs; {rec['messages_ok']:,} / {rec['messages_expected']:,}"
            f" answers{responses}", "no loss",
            lost == 0 and rec["requests"] == rec["sent"] and rec["runs"] == rec["sent"] and rec["runs_ok"]
            and rec["messages_ok"] == rec["messages_expected"] and rec["responses_ok"])
    o = r.get("open")
    if o:
        add(f"Proxy RSS with {o['streams']:,} streams open at once (fresh proxy; max while all open, and the "
            "peak including their completion)",
            f"{fmt(o['rss_open_max_mb'], ' MB', 1)} (peak {fmt(o['rss_peak_mb'], ' MB', 1)})",
            f"≤ {TARGETS['rss_open_mb']} MB", le(o["rss_open_max_mb"], TARGETS["rss_open_mb"]) and (
                o["opened"] == o["streams"]))
        add(f"{o['streams']:,} open streams completed", f"{o['completed']:,} (errors {o['errors']})",
            f"{o['streams']:,}", o["completed"] == o["streams"])
    if "peak_rss_mb" in r:
        add("Proxy peak RSS, whole run (VmHWM)", fmt(r["peak_rss_mb"], " MB", 1), f"≤ {TARGETS['rss_open_mb']} MB",
            le(r["peak_rss_mb"], TARGETS["rss_open_mb"]))
    if "shutdown" in r:
        sd = r["shutdown"]
        add("SIGTERM: drained, flushed, exit code", f"{sd['exit_code']} in {fmt(sd['shutdown_s'], ' s', 1)}", "0",
            sd["exit_code"] == 0)
    lines += ["| Metric | Measured | Target | Result |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "### Per scenario", "",
              "| Scenario | Via | OK / sent | req/s | p50 ms | p99 ms | TTFE p50 ms | TTFE p99 ms "
              "| proxy CPU ms/req | busy after a round | proxy RSS after (peak) | other load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in scenarios:
        for name in ("direct", *REFERENCES, "runtap", *OBSERVABILITY_TARGETS):
            if name not in x:
                continue
            v = x[name]
            lines.append(
                f"| {x['kind']} c={x['concurrency']} | {name} | {v['ok']:,} / {v['requests']:,}"
                f" | {fmt(v['rps'], '', 0)} | {fmt(v['p50_ms'])} | {fmt(v['p99_ms'])}"
                f" | {fmt(v['ttfe_p50_ms'])} | {fmt(v['ttfe_p99_ms'])}"
                f" | {fmt(v['cpu_ms_per_req'], '', 3)} | {fmt(v['max_drain_s'], ' s', 1)}"
                + ("" if v.get("max_queue") is None else f"; queue ≤ {v['max_queue']:,.0f}")
                + (f" | {fmt(x['rss_after_mb'], ' MB', 0)} ({fmt(x['rss_peak_mb'], ' MB', 0)})"
                   f" | {fmt(x['other_load_cores'], ' CPU')} |" if name == "runtap" else " | | |"))
    side = [n for n in (*REFERENCES, "runtap") if any(n in x for x in r["scenarios"])]
    if len(side) > 1:
        lines += ["", "### Side by side: each proxy against the direct calls of the same rounds", "",
                  "| Scenario | Figure | " + " | ".join(side) + " |", "|---|---|" + "---|" * len(side)]
        figures: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("added p50 ms", lambda v: fmt(v["added_p50_ms"])), ("added p99 ms", lambda v: fmt(v["added_p99_ms"])),
            ("added TTFE p50 ms", lambda v: fmt(v["added_ttfe_p50_ms"])),
            ("throughput vs direct", lambda v: fmt(v["throughput_ratio"], "x")),
            ("CPU ms/req", lambda v: fmt(v["cpu_ms_per_req"], "", 3))]
        for x in scenarios:
            for label, get in figures:
                if label.startswith("added TTFE") and x["kind"] == "json":
                    continue
                lines.append(f"| {x['kind']} c={x['concurrency']} | {label} | "
                             + " | ".join(get(x[n]) if n in x else "—" for n in side) + " |")
    if (r.get("nginx") or {}).get("skipped"):
        lines += ["", f"nginx not measured: {r['nginx']['skipped']}."]
    for ref in REFERENCES:
        if not any(ref in x for x in r["scenarios"]):
            continue
        lines += ["", f"runtap minus {ref} ({REFERENCES[ref]}).", "",
                  "| Scenario | p50 ms | p99 ms | TTFE p50 ms | throughput | CPU ms/req |", "|---|---|---|---|---|---|"]
        for x in scenarios:
            if ref not in x:
                continue
            f, p = x[ref], x["runtap"]
            ratio = p["rps"] / f["rps"] if p["rps"] and f["rps"] else None
            lines.append(f"| {x['kind']} c={x['concurrency']} | {fmt(diff(p['p50_ms'], f['p50_ms']))} | "
                         f"{fmt(diff(p['p99_ms'], f['p99_ms']))} | {fmt(diff(p['ttfe_p50_ms'], f['ttfe_p50_ms']))} | "
                         f"{fmt(ratio, 'x')} | {fmt(diff(p['cpu_ms_per_req'], f['cpu_ms_per_req']), '', 3)} |")
    if rec:
        # The responses column only when Responses were sent: without them the table is as it was.
        with_responses = bool(rec["responses_expected"])
        lines += ["", "### Recording (read back from DuckDB after SIGTERM)", "",
                  "| Requests | Sent | Events recorded / expected | requests rows (completed)"
                  " | runs rows (completed, with the upstream's usage) | messages with the full answer |"
                  + (" responses rows (completed, with the upstream's usage) |" if with_responses else ""),
                  "|---|---|---|---|---|---|" + ("---|" if with_responses else "")]
        for tag, t in rec["tags"].items():
            lines.append(f"| {TAG_NAMES.get(tag, tag)} | {t['sent']:,} | {t['events']:,} / {t['events_expected']:,}"
                         f" | {t['requests']:,} ({t['requests_completed']:,})"
                         f" | {t['runs']:,} ({t['runs_completed']:,}, {t['runs_with_usage']:,})"
                         f" | {t['messages_ok']:,} / {t['messages_expected']:,} |"
                         + ("" if not with_responses else " — |" if not t["responses_expected"] else
                            f" {t['responses']:,} ({t['responses_completed']:,}, {t['responses_with_usage']:,}) |"))
        lines.append(f"\nEvents without a run id: {rec['events_without_run_id']}; spill file: {rec['spill']}.")
        if with_responses or any(tag[0] in "Cc" for tag in rec["tags"]):
            lines.append("Responses and Chat: a run is a turn (runs.api responses or chat); an event per SSE frame (a "
                         "Chat stream's [DONE] included, a Responses stream has none); the answer is the Response's "
                         "message item (response_items) or the Chat completion's messages row.")
    if o:
        lines += ["", f"### {o['streams']:,} streams open at once", "",
                  f"All {o['opened']:,} streams had their first events after {o['open_s']:.1f} s (upstream holding "
                  f"{o['held_by_upstream']:,}); proxy RSS {o['rss_before_mb']:.1f} MB before, "
                  f"{o['rss_open_max_mb']:.1f} MB max while open (of which {o['rss_open_file_mb']:.1f} MB file-backed: "
                  f"library code; {o['fds_open']:,} fds; "
                  f"{(o['rss_open_max_mb'] - o['rss_before_mb']) * 1024 / o['streams']:.1f} KB per open stream), "
                  f"peak {fmt(o['rss_peak_mb'], ' MB', 1)} while they completed and were recorded, "
                  f"{o['rss_after_mb']:.1f} MB after; all done {o['total_s']:.1f} s after the first was opened. "
                  f"The proxy's RSS right after start was {r['rss_idle_mb']:.1f} MB."]
    if pc:
        q = pc["queue"]
        quarters = ", ".join(f"{d:,.0f}" for d in q["quarter_max"])
        lines += ["", f"### Paced: {pc['events_per_s_offered']:,.0f} events/s offered to runtap", "",
                  f"{pc['ok']:,} of {pc['runs']:,} streamed runs completed ({pc['errors']} errors) in "
                  f"{pc['wall_s']:.1f} s, started on a fixed schedule ({pc['late_starts']} more than 50 ms late; "
                  f"at most {pc['most_open']} open at once); p50 / p99 {fmt(pc['p50_ms'], ' ms')} / "
                  f"{fmt(pc['p99_ms'], ' ms')}; proxy CPU per run {fmt(pc['cpu_ms_per_run'], ' ms', 3)} "
                  f"(event loop {fmt(pc['loop_cpu_ms_per_run'], ' ms', 3)}). Queue depth from /metrics every "
                  f"{PACED_SAMPLE_S} s ({q['samples']} samples): largest per quarter of the run {quarters} "
                  f"rows; {fmt(pc['queue_at_end'], ' rows', 0)} when the last run ended; idle again after "
                  f"{fmt(pc['drain_s'], ' s', 1)}. Other load {fmt(pc['other_load_cores'], ' CPU')}."]
    if wb:
        lines += ["", "### store.Writer alone (in-process, the benchmark's streams handed over as their bytes, "
                  f"~{wb['bytes_per_row']:.0f} B per event)", "",
                  "| Run | events/s | max queue depth | flushed after last submit | max loop stall | events in db |",
                  "|---|---|---|---|---|---|"]
        for label in ("unpaced", "paced"):
            w = wb[label]
            name = label if label == "unpaced" else f"paced {r['config']['writer_rate']:,.0f}/s"
            lines.append(f"| {name} | {fmt(w['rows_per_s'], '', 0)} | {w['max_queue_depth']:,} | "
                         f"{fmt(w['flush_lag_s'] * 1000, ' ms', 0)} | {fmt(w['max_loop_stall_ms'], ' ms', 1)} | "
                         f"{w['rows_in_db']:,} |")
    errors = [(x["kind"], x["concurrency"], n, x[n]["error_examples"]) for x in r["scenarios"]
              for n in ("direct", *REFERENCES, "runtap", *OBSERVABILITY_TARGETS) if n in x and x[n]["error_examples"]]
    if errors or (o and o["error_examples"]):
        lines += ["", "### Errors (first few)", ""]
        lines += [f"- {k} c={c} {n}: {e}" for k, c, n, e in errors]
        if o and o["error_examples"]:
            lines.append(f"- open streams: {o['error_examples']}")
    return "\n".join(lines)


TAG_NAMES = {
    "S01R": "stream c=1", "S32R": "stream c=32", "J01R": "json c=1", "J32R": "json c=32", "H00R": "open streams",
    "h00r": "warm-up before open streams", "s01r": "warm-up stream c=1", "s32r": "warm-up stream c=32",
    "j01r": "warm-up json c=1", "j32r": "warm-up json c=32", "P00R": "paced streams",
    "R01R": "responses c=1", "R32R": "responses c=32", "r01r": "warm-up responses c=1",
    "r32r": "warm-up responses c=32", "C01R": "chat c=1", "C32R": "chat c=32", "c01r": "warm-up chat c=1",
    "c32r": "warm-up chat c=32",
}


# -- main ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    started = time.perf_counter()
    children: list[Child] = []
    r: dict[str, Any] = {
        "machine": machine(), "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {"requests_c1": args.requests_c1, "requests_high": args.requests_high,
                   "high_concurrency": args.concurrency, "rounds": args.rounds, "warmup": args.warmup,
                   "open_streams": args.open_streams, "writer_rows": args.writer_rows,
                   "writer_rate": args.writer_rate, "paced_events": args.paced_events, "paced_s": args.paced_s,
                   "api_requests_c1": args.api_requests_c1, "api_requests_high": args.api_requests_high,
                   "kinds": sorted(args.kinds, key=KINDS.index)},
        "targets": TARGETS, "scenarios": [],
    }
    db = tmp / "bench.duckdb"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            upstream = await start_upstream(tmp, "upstream")
            children.append(upstream)
            async with session.get(upstream.url + "/bench/info") as resp:
                info = await resp.json()
            floor = None
            if args.floor:
                floor = await start_upstream(tmp, "floor", relay_to=upstream.url)
                children.append(floor)
            nginx = None
            if args.nginx:
                binary, version = find_nginx(args.nginx_bin)
                r["nginx"] = {"binary": binary, "version": version if binary else None, "measured": False,
                              "skipped": None if binary else version}
                if binary is not None:
                    try:
                        nginx = await start_nginx(session, tmp, binary, version, upstream.url)
                    except RuntimeError as e:
                        r["nginx"]["skipped"] = f"did not start: {e}"
                    else:
                        children.append(nginx)
                        r["nginx"].update(measured=True, config=(tmp / "nginx.conf").read_text())
                if nginx is None:
                    log(f"nginx {r['nginx']['skipped']}; carrying on without it")
            proxy = await start_proxy(session, tmp, upstream.url, db, args.config)
            children.append(proxy)
            run_load = OtherLoad([os.getpid()] + [pid for c in children for pid in c.pids()])
            r["setup"] = (f"fast upstream ({info['events']} events, {info['stream_bytes']:,} B per stream; JSON run "
                          f"{info['json_bytes']:,} B); client {args.requests_c1:,} requests per target at c=1, "
                          f"{args.requests_high:,} at c={args.concurrency}, in {args.rounds} alternating rounds after "
                          f"{args.warmup} warm-up requests; proxy recording to a fresh DuckDB file"
                          + _api_setup(args, info)
                          + (f"; nginx {r['nginx']['version']} (1 worker, proxy_buffering off, upstream keepalive 64)"
                             if nginx else ""))
            r["rss_idle_mb"] = memory_kb(proxy.pid)["VmRSS"] / 1024
            extra: list[tuple[str, Child]] = []
            if args.observability:
                for name in OBSERVABILITY_TARGETS:
                    config = tmp / f"{name}.toml"
                    config.write_text(_observability_config(args.config, name, upstream.url))
                    child = await start_proxy(session, tmp, upstream.url, tmp / f"{name}.duckdb", str(config), name)
                    children.append(child)
                    extra.append((name, child))
            load = Load(session, info)
            bench = Bench(args, load, upstream, proxy, floor, QueueProbe(session, proxy.admin_url), extra, nginx)
            if args.open_streams:  # first, on a fresh proxy: what holding the streams costs, alone
                log(f"{args.open_streams:,} streams open at once")
                r["open"] = await bench.open_streams(args.open_streams)
                log(f"  RSS {r['open']['rss_open_max_mb']:.1f} MB, {r['open']['completed']} completed")
            # The Responses and Chat streams after the Assistants ones and JSON: those two run as they
            # always did, on a proxy in the same state, so their figures stay comparable with earlier runs.
            plan = [("stream", 1, args.requests_c1), ("stream", args.concurrency, args.requests_high),
                    ("json", 1, args.requests_c1), ("json", args.concurrency, args.requests_high)]
            plan += [(kind, c, n) for kind in API_STREAMS
                     for c, n in ((1, args.api_requests_c1), (args.concurrency, args.api_requests_high))]
            for kind, c, n in plan:
                if n <= 0 or kind not in args.kinds:
                    continue
                log(f"{kind} c={c}: {n:,} requests per target")
                r["scenarios"].append(await bench.scenario(kind, c, n))
                _log_scenario(r["scenarios"][-1])
            if args.paced_events > 0 and args.paced_s > 0:
                log(f"paced: {args.paced_events:,.0f} events/s through runtap for {args.paced_s:.0f} s")
                r["paced"] = await bench.paced(args.paced_events, args.paced_s)
                pc = r["paced"]
                log(f"  {pc['events_per_s']:,.0f} events/s relayed, queue slope "
                    f"{fmt(pc['queue']['slope_rows_per_s'], ' rows/s', 0)}, busy {pc['drain_s']:.1f} s after")
            # VmHWM restarts with each phase (reset_peak_rss): the run's peak is the largest of them.
            peaks = [x.get("rss_peak_mb") for x in [*r["scenarios"], r.get("open") or {}]]
            r["peak_rss_mb"] = max([memory_kb(proxy.pid)["VmHWM"] / 1024] + [p for p in peaks if p])
            frames = await _one_stream_frames(session, upstream.url, info)
        r["other_load_cores"] = run_load.cores()  # while the children still exist to be told apart
        log("stopping the proxy (SIGTERM)")
        r["shutdown"] = await asyncio.to_thread(stop_proxy, proxy)
        rec = count_recorded(db, info, load.sent_by_tag)
        _totals(rec, r, args.concurrency)
        r["recording"] = rec
        for child in children:
            child.kill()
        if args.writer_rows:
            log(f"store.Writer alone: {args.writer_rows:,} rows")
            r["writer"] = await writer_bench(args.writer_rows, args.writer_rate, tmp, frames, info["placeholder"])
    finally:
        for child in children:
            child.kill()
    r["wall_s"] = time.perf_counter() - started
    return r


def _api_setup(args: argparse.Namespace, info: dict[str, Any]) -> str:
    """The setup line's words on the Responses and Chat streams, if they run."""
    parts = [f"{'a streamed Response' if kind == 'responses' else 'a Chat stream with include_usage'} "
             f"({info[kind]['events']} frames, {info[kind]['stream_bytes']:,} B)" for kind in API_STREAMS
             if kind in args.kinds]
    if not parts:
        return ""
    return (f"; {' and '.join(parts)}: {args.api_requests_c1:,} requests per target at c=1, "
            f"{args.api_requests_high:,} at c={args.concurrency}")


def _observability_config(base: str | None, name: str, upstream: str) -> str:
    """The --config file's text (if any) with the [telemetry] of one observability target."""
    text = Path(base).read_text() if base else ""
    if "[telemetry]" in text:
        raise SystemExit("--observability sets [telemetry] itself: drop it from --config or pass --no-observability")
    traced = name == "traced"
    endpoint = json.dumps(upstream if traced else "")
    return f"{text}\n[telemetry]\nmetrics = {'true' if traced else 'false'}\notlp_endpoint = {endpoint}\n"


async def _one_stream_frames(session: aiohttp.ClientSession, upstream: str, info: dict[str, Any]) -> list[bytes]:
    """The stream's frames, for the writer bench's rows."""
    body = json.dumps(info["stream_request"]).encode()
    async with session.post(upstream + "/v1/threads/runs", data=body, headers={
            **BASE_HEADERS, "x-bench-token": info["placeholder"].replace("@", "P")}) as resp:
        raw = await resp.read()
    frames = [f + b"\n\n" for f in raw.split(b"\n\n") if f]
    return [f.replace(b"P" * 20, info["placeholder"].encode()) for f in frames]


def _totals(rec: dict[str, Any], r: dict[str, Any], hi: int) -> None:
    tags = rec["tags"].values()
    rec["sent"] = sum(t["sent"] for t in tags)
    rec["events_expected"] = sum(t["events_expected"] for t in tags)
    rec["events"] = sum(t["events"] for t in tags)
    rec["requests"] = sum(t["requests"] for t in tags)
    rec["runs"] = sum(t["runs"] for t in tags)
    rec["runs_ok"] = sum(t["runs_completed"] == t["runs_with_usage"] == t["runs"] for t in tags) == len(tags)
    rec["messages_ok"] = sum(t["messages_ok"] for t in tags)
    rec["messages_expected"] = sum(t["messages_expected"] for t in tags)
    rec["responses"] = sum(t["responses"] for t in tags)
    rec["responses_expected"] = sum(t["responses_expected"] for t in tags)
    rec["responses_ok"] = all(t["responses_completed"] == t["responses_with_usage"] == t["responses"]
                              == t["responses_expected"] for t in tags)
    for x in r["scenarios"]:
        if x["kind"] == "stream" and x["concurrency"] == hi:
            t = rec["tags"].get(f"S{hi:02d}R")
            p = x["runtap"]
            if t and p["wall_s"]:
                busy = p["wall_s"] + p["drain_total_s"]
                rec["stream_high"] = {"events": t["events"], "wall_s": p["wall_s"], "busy_s": busy,
                                      "events_per_s": t["events"] / busy, "max_drain_s": p["max_drain_s"],
                                      "max_queue": p["max_queue"], "max_queue_after_round": p["max_queue_after_round"]}


def _log_scenario(x: dict[str, Any]) -> None:
    d = x["direct"]
    parts = [f"direct {fmt(d['rps'], '', 0)} req/s p50 {fmt(d['p50_ms'])} ms"]
    for name in (*REFERENCES, "runtap"):
        if name in x:
            p = x[name]
            parts.append(f"{name} {fmt(p['rps'], '', 0)} req/s p50 {fmt(p['p50_ms'])} ms (+{fmt(p['added_p50_ms'])}), "
                         f"{fmt(p['cpu_ms_per_req'], '', 3)} ms CPU/req")
    errors = "/".join(str(x[n]["errors"]) for n in ("direct", *REFERENCES, "runtap") if n in x)
    log("  " + "; ".join(parts) + f", errors {errors}")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children (the proxy) inherit it
    if want < need:
        log(f"warning: the fd limit {want} is below the {need} this run needs")


def _kinds(value: str) -> set[str]:
    kinds = {k.strip() for k in value.split(",") if k.strip()}
    unknown = kinds - set(KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {', '.join(sorted(unknown))}; "
                                         f"choose from {', '.join(KINDS)}")
    return kinds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer requests (under two minutes)")
    p.add_argument("--requests-c1", type=int, help="requests per target at concurrency 1 (2,000; quick 500)")
    p.add_argument("--requests-high", type=int, help="requests per target at high concurrency (10,000; quick 2,500)")
    p.add_argument("--concurrency", type=int, default=32, help="the high concurrency (default 32)")
    p.add_argument("--rounds", type=int, help="alternating rounds per scenario (4; quick 2)")
    p.add_argument("--warmup", type=int, help="warm-up requests per target and scenario (200; quick 64)")
    p.add_argument("--no-observability", dest="observability", action="store_false",
                   help="skip the two extra proxies that measure metrics + tracing on vs off")
    p.add_argument("--api-requests-c1", type=int,
                   help="requests per target at concurrency 1 for the responses and chat kinds (500; quick 200)")
    p.add_argument("--api-requests-high", type=int,
                   help="requests per target at high concurrency for the responses and chat kinds (2,500; "
                   "quick 800)")
    p.add_argument("--kinds", type=_kinds, default=set(KINDS),
                   help="scenarios to run, comma-separated: stream (Assistants), json (Assistants polls), responses, "
                   "chat (default stream,json,responses,chat)")
    p.add_argument("--open-streams", type=int, default=1000, help="streams held open at once (0 skips)")
    p.add_argument("--writer-rows", type=int, help="rows for the store.Writer bench (200,000; quick 60,000; 0 skips)")
    p.add_argument("--writer-rate", type=float, default=20_000, help="paced rate for the writer bench (rows/s)")
    p.add_argument("--paced-events", type=float, default=20_000,
                   help="events/s offered to runtap in the paced phase (default 20,000, the target; 0 skips)")
    p.add_argument("--paced-s", type=float, help="length of the paced phase in seconds (20; quick 10)")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the bare aiohttp passthrough (no recording) measured beside runtap")
    p.add_argument("--no-nginx", dest="nginx", action="store_false",
                   help="skip nginx (Debian's package, one worker, a streaming reverse proxy) measured beside runtap")
    p.add_argument("--nginx-bin", help="the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
    p.add_argument("--config", help="runtap TOML config for the proxy (default: built-in defaults)")
    p.add_argument("--phase-timeout", type=float, default=180, help="longest one round may take (s)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (database, logs)")
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("requests_c1", 2000, 500), ("requests_high", 10_000, 2500), ("rounds", 4, 2),
                              ("warmup", 200, 64), ("writer_rows", 200_000, 60_000), ("paced_s", 20.0, 10.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    # Fewer Responses and Chat requests than Assistants streams: four more scenarios would otherwise
    # double the run. Quick stays near its old length only so far: each scenario's warm-up and the
    # drain after every proxied round cost ~5 s whatever the count.
    # Half the Assistants stream's counts: per-request CPU settles by then (2.58-2.66 ms at c=1 and
    # 1.74-1.84 ms at c=32 for all three streams at 500 / 2,500), and make bench stays near 4.5 minutes.
    for name, full, quick in (("api_requests_c1", 500, 200), ("api_requests_high", 2500, 800)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if not 1 <= args.concurrency <= 99:
        p.error("--concurrency must be 1..99 (it is part of each request's 20-character token)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(4 * args.open_streams + 256)
    tmp = Path(tempfile.mkdtemp(prefix="runtap-bench-"))
    try:
        try:
            import uvloop
        except ImportError:
            results = asyncio.run(run(args, tmp))
        else:
            results = uvloop.run(run(args, tmp))
    except RuntimeError as e:  # a process did not start or answer: say why, with its log's tail
        log(f"failed: {e}")
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
