"""Soak: 1,000 streamed runs held open at once, then minutes of closed-loop load; nothing may be lost.

Processes, all on loopback: the bundled fake upstream (``proxy.testing.fake_upstream``, no logs,
bounded state), runtap (``python -m proxy``, recording to a fresh DuckDB file) and the load
generator (this process: one aiohttp session, keep-alive connections).

1. Hold: ``--hold`` streamed runs (``POST /v1/threads/runs``) opened at once; the fake drips their
   events (``--hold-drip-s`` apart), so all of them are open together; every one must complete.
2. Soak: ``--workers`` clients, each on its own thread, run streamed runs back to back
   (``POST /v1/threads/{id}/runs``, not dripped: the highest rate this machine sustains) for
   ``--duration`` seconds. Every ``--sample-s`` the proxy's RSS and open file descriptors are sampled.
3. Latency added: time to first byte through runtap against the same fake called directly, with
   ``--latency-workers`` clients (below saturation: at the soak's concurrency the three processes
   queue for 2 CPUs), ``--latency-s`` seconds each, alternating; plus runtap's own
   ``runtap_added_latency_seconds`` histogram over the whole run.
4. SIGTERM (runtap drains and flushes), then the recording is opened read-only: events recorded
   must equal the events the clients received (the fake frames every event with one blank line).

    python scripts/soak.py [--duration 300] [--hold 1000] [--workers 32] [--keep]

Bounded: ``--duration`` is capped at 30 minutes and ``--hold`` at 5,000. Progress goes to stderr,
the report (Markdown) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import duckdb

KEY = "sk-soak-" + "0" * 40
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2", "Content-Type": "application/json"}
MAX_DURATION_S = 1800
MAX_HOLD = 5000


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the fake upstream (a child process) ------------------------------------------------------------


def serve_fake(port: int, drip_s: float, events: int) -> None:
    """The bundled fake, quiet and bounded; create-and-run streams drip, runs on a thread do not."""
    from proxy.testing.fake_upstream import FakeUpstream, run_fake_upstream
    from proxy.testing.faults import Fault
    from proxy.testing.scripts import Script

    class Always(list[Fault]):
        """A fault list whose one fault is never used up: every matching request drips."""

        def remove(self, value: Fault) -> None:
            pass

    fake = FakeUpstream(default_script=lambda body: Script.text("soak " * events, chunks=events), record=False,
                        max_threads=20_000, poll_after_ms=None)
    fake.faults = Always([Fault(path="/threads/runs", method="POST", drip_delay_s=drip_s)])
    run_fake_upstream("127.0.0.1", port, fake)


# -- processes ---------------------------------------------------------------------------------------


@dataclass
class Procs:
    work: Path
    fake_port: int
    port: int
    admin_port: int
    fake: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None

    @property
    def db(self) -> Path:
        return self.work / "soak.duckdb"

    def start(self, drip_s: float, events: int) -> None:
        self.fake = subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", str(self.fake_port), "--hold-drip-s", str(drip_s),
             "--events", str(events)], stdout=subprocess.DEVNULL, stderr=(self.work / "fake.err").open("wb"))
        config = self.work / "soak.toml"
        config.write_text("[server]\nshutdown_grace_s = 60\n\n[timeouts]\nread_s = 120\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTAP_", "OTEL_"))}
        self.proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config), "--upstream", f"http://127.0.0.1:{self.fake_port}",
             "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
             "--db", str(self.db)],
            stdout=(self.work / "proxy.out").open("wb"), stderr=(self.work / "proxy.err").open("wb"), env=env,
            cwd=self.work)

    def stop(self) -> None:
        for proc in (self.proxy, self.fake):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def wait_up(url: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up in {deadline_s} s")


def proc_sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


# -- load --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    runs: int = 0
    events: int = 0
    failed: int = 0
    ttfb: list[float] = field(default_factory=list)


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=HEADERS) as r:
            if r.status != 200:
                tally.failed += 1
                await r.read()
                return
            chunks = []
            first = True
            async for chunk in r.content.iter_any():
                if first:
                    tally.ttfb.append(time.perf_counter() - started)
                    first = False
                chunks.append(chunk)
    except (aiohttp.ClientError, OSError):
        tally.failed += 1
        return
    data = b"".join(chunks)
    if not data.endswith(b"event: done\ndata: [DONE]\n\n"):
        tally.failed += 1
    tally.runs += 1
    tally.events += data.count(b"\n\n")


async def hold_phase(base: str, n: int) -> tuple[Tally, int, float]:
    """n create-and-run streams at once; returns the tally, the most open at once, and the wall time."""
    tally, open_now, most = Tally(), 0, 0
    body = b'{"assistant_id": "asst_soak", "stream": true}'
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def held() -> None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            try:
                await one_stream(session, base + "/v1/threads/runs", body, tally)
            finally:
                open_now -= 1

        started = time.monotonic()
        await asyncio.gather(*(held() for _ in range(n)))
    return tally, most, time.monotonic() - started


async def worker(session: aiohttp.ClientSession, base: str, until: float, tally: Tally) -> None:
    async with session.post(base + "/v1/threads", data=b"{}", headers=HEADERS) as r:
        thread_id = (await r.json())["id"]
    body = b'{"assistant_id": "asst_soak", "stream": true}'
    while time.monotonic() < until:
        await one_stream(session, f"{base}/v1/threads/{thread_id}/runs", body, tally)


async def closed_loop(base: str, workers: int, seconds: float, tally: Tally) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        until = time.monotonic() + seconds
        await asyncio.gather(*(worker(session, base, until, tally) for _ in range(workers)))


async def soak_phase(base: str, workers: int, seconds: float, pid: int, every_s: float
                     ) -> tuple[Tally, list[tuple[float, float, int, int]]]:
    tally = Tally()
    samples: list[tuple[float, float, int, int]] = []
    load = asyncio.create_task(closed_loop(base, workers, seconds, tally))
    started = time.monotonic()
    while not load.done():
        rss, fds = proc_sample(pid)
        samples.append((time.monotonic() - started, rss, fds, tally.runs))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(load), every_s)
    await load
    rss, fds = proc_sample(pid)
    samples.append((time.monotonic() - started, rss, fds, tally.runs))
    return tally, samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def histogram_p99(metrics: str, name: str) -> tuple[float, int]:
    """The bucket bound under which 99% of a Prometheus histogram's observations fall, and the count."""
    buckets = [(float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2]))
               for m in re.finditer(rf'^{name}_bucket{{.*?le="([^"]+)".*?}} (\S+)$', metrics, re.M)]
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0) + count
    total = merged.get(float("inf"), 0)
    for bound in sorted(merged):
        if total and merged[bound] >= 0.99 * total:
            return bound, int(total)
    return float("nan"), int(total)


async def main(args: argparse.Namespace) -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 streams: 3 sockets each, 3 processes
    work = Path(tempfile.mkdtemp(prefix="runtap-soak-"))
    procs = Procs(work, free_port(), free_port(), free_port())
    try:
        procs.start(args.hold_drip_s, args.events)
        base, direct = f"http://127.0.0.1:{procs.port}", f"http://127.0.0.1:{procs.fake_port}"
        await wait_up(direct + "/v1/models")
        await wait_up(f"http://127.0.0.1:{procs.admin_port}/readyz")
        await wait_up(base + "/v1/models")
        assert procs.proxy is not None
        pid = procs.proxy.pid
        rss0, fds0 = proc_sample(pid)
        log(f"runtap pid {pid} up: RSS {rss0:.0f} MiB, {fds0} fds; work dir {work}")

        log(f"hold: {args.hold} streams at once, events {args.hold_drip_s} s apart")
        hold, most, hold_s = await hold_phase(base, args.hold)
        rss_hold, fds_hold = proc_sample(pid)
        log(f"hold done in {hold_s:.1f} s: {hold.runs} runs, {hold.failed} failed, at most {most} open")

        log(f"soak: {args.workers} workers for {args.duration:g} s")
        soak, samples = await soak_phase(base, args.workers, args.duration, pid, args.sample_s)
        log(f"soak done: {soak.runs} runs, {soak.failed} failed")

        # Below saturation: at the soak's concurrency the three processes share 2 CPUs and the
        # client-measured figure is mostly queueing for a CPU, not what runtap adds.
        log(f"latency: direct vs runtap, {args.latency_s:g} s each, {args.latency_workers} workers")
        via, straight = Tally(), Tally()
        for _ in range(2):  # alternating halves, so drift hits both alike
            await closed_loop(direct, args.latency_workers, args.latency_s / 2, straight)
            await closed_loop(base, args.latency_workers, args.latency_s / 2, via)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{procs.admin_port}/metrics") as r:
            metrics = await r.text()

        procs.proxy.send_signal(signal.SIGTERM)
        code = procs.proxy.wait(120)
        con = duckdb.connect(str(procs.db), read_only=True)
        try:
            [(recorded, requests, bad_outcomes, runs_done)] = con.execute(
                "select (select count(*) from events), (select count(*) from requests), "
                "(select count(*) from requests where outcome is distinct from 'completed'), "
                "(select count(*) from runs where status = 'completed')").fetchall()
        finally:
            con.close()
        sent = hold.events + soak.events + via.events
        client_runs = hold.runs + soak.runs + via.runs
        p99_bound, observed = histogram_p99(metrics, "runtap_added_latency_seconds")
        cpus = os.cpu_count()
        load1, load5, _ = os.getloadavg()

        print(f"## runtap soak ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpus} CPUs, "
              f"load average {load1:.1f}/{load5:.1f})\n")
        print("| phase | runs | failed | events | wall | rate |\n|---|---|---|---|---|---|")
        print(f"| hold ({args.hold} at once, most open together: {most}) | {hold.runs} | {hold.failed} | "
              f"{hold.events} | {hold_s:.1f} s | |")
        print(f"| soak ({args.workers} workers, closed loop) | {soak.runs} | {soak.failed} | {soak.events} | "
              f"{args.duration:g} s | {soak.runs / args.duration:.0f} runs/s, "
              f"{soak.events / args.duration:.0f} events/s |")
        print(f"| latency comparison ({args.latency_workers} workers, through runtap) | {via.runs} | {via.failed} | "
              f"{via.events} | "
              f"{args.latency_s / 2:g} s | |\n")
        lost = sent - recorded
        print(f"**Events received by clients: {sent}; recorded: {recorded}; lost: {lost}.** "
              f"Requests recorded: {requests} (client runs: {client_runs}, threads: "
              f"{args.workers + 2 * args.latency_workers}); "
              f"not completed: {bad_outcomes}; runs recorded completed: {runs_done}. runtap exit code: {code}.\n")
        print(f"RSS / fds: at start {rss0:.0f} MiB / {fds0}; with {args.hold} streams open (after) "
              f"{rss_hold:.0f} MiB / {fds_hold}.\n")
        print("| t (s) | RSS (MiB) | open fds | runs so far |\n|---|---|---|---|")
        for t, rss, fds, runs in samples:
            print(f"| {t:.0f} | {rss:.0f} | {fds} | {runs} |")
        grown = samples[-1][1] - samples[0][1]
        print(f"\nRSS grew {grown:.0f} MiB over the soak: {grown * 1024 / max(1, soak.runs):.1f} KiB per run "
              f"(runtap keeps up to max_tracked_runs runs in memory; DuckDB caches blocks).")
        print(f"\n| time to first byte ({args.latency_workers} workers) | p50 | p99 | n |\n|---|---|---|---|")
        for name, tally in (("direct to the fake", straight), ("through runtap", via)):
            print(f"| {name} | {pct(tally.ttfb, 0.5) * 1000:.2f} ms | {pct(tally.ttfb, 0.99) * 1000:.2f} ms | "
                  f"{len(tally.ttfb)} |")
        added = (pct(via.ttfb, 0.99) - pct(straight.ttfb, 0.99)) * 1000
        print(f"\np99 added latency (client-measured difference of p99s): {added:.2f} ms; runtap's own "
              f"`runtap_added_latency_seconds`: p99 <= {p99_bound * 1000:g} ms over {observed} requests.")
        return 0 if lost == 0 and not (hold.failed or soak.failed or via.failed) and code == 0 else 1
    finally:
        procs.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="soak seconds (default 300, max 1800)")
    parser.add_argument("--hold", type=int, default=1000, help="streams held open at once (default 1000)")
    parser.add_argument("--hold-drip-s", type=float, default=0.5, help="seconds between a held stream's events")
    parser.add_argument("--events", type=int, default=10, help="message deltas per run (default 10)")
    parser.add_argument("--workers", type=int, default=32, help="closed-loop clients in the soak (default 32)")
    parser.add_argument("--latency-s", type=float, default=20, help="seconds of latency comparison (default 20)")
    parser.add_argument("--latency-workers", type=int, default=4, help="clients in the latency comparison (default 4)")
    parser.add_argument("--sample-s", type=float, default=10, help="seconds between RSS/fd samples")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (db, logs)")
    parser.add_argument("--serve-fake", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 0 < args.hold <= MAX_HOLD:
        parser.error(f"--duration must be in (0, {MAX_DURATION_S}] and --hold in (0, {MAX_HOLD}]")
    return args


if __name__ == "__main__":
    arguments = parse()
    if arguments.serve_fake:
        serve_fake(arguments.serve_fake, arguments.hold_drip_s, arguments.events)
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
