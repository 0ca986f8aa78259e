"""Settings: declared once, with type, default, bounds and help (architecture.md §8.6).

Precedence: command-line flags beat environment variables, which beat the config file, which
beats the defaults here. `config.example.toml` documents every field; a test proves it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .budgets.settings import BudgetsSettings
from .errors import ConfigError

ENV_CONFIG = "RUNTAP_CONFIG"
"""Path of the TOML config file."""
ENV_ADMIN_TOKEN = "RUNTAP_ADMIN_TOKEN"
"""Bearer token for /admin/*; required when the admin listener is not on loopback."""
# Environment overrides: variable → (section, field).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "RUNTAP_UPSTREAM": ("server", "upstream"),
    "RUNTAP_LISTEN": ("server", "listen"),
    "RUNTAP_ADMIN_LISTEN": ("server", "admin_listen"),
    "RUNTAP_DB": ("recorder", "db"),
}


def _hostport(value: str) -> str:
    try:
        parse_hostport(value)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return value


HostPort = Annotated[str, AfterValidator(_hostport)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSettings(_Section):
    upstream: str = Field("https://api.openai.com", description="Base URL every request is forwarded to.")
    listen: HostPort = Field("127.0.0.1:8080", description="HOST:PORT the proxy listens on.")
    admin_listen: HostPort = Field(
        "127.0.0.1:9464", description="HOST:PORT of the admin listener (/metrics, /healthz, /admin/*)."
    )
    admin_sql_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="POST /admin/sql: a statement running longer is interrupted (400)."
    )
    admin_sql_max_rows: int = Field(
        10_000, gt=0, le=1_000_000, description="POST /admin/sql: most rows in an answer (then truncated: true)."
    )
    max_recorded_body_bytes: int = Field(
        16 * 1024 * 1024, gt=0, le=1024**3,
        description="Largest request body accepted on a recorded route (413 above it); also the "
        "largest JSON response body recorded.",
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight streams may take to finish."
    )
    uvloop: bool = Field(True, description="Run on uvloop when it is installed.")


class TimeoutSettings(_Section):
    connect_s: float = Field(10.0, gt=0, le=600, description="Connecting to the upstream (502 after).")
    read_s: float = Field(
        600.0, gt=0, le=86400,
        description="Longest silence from the upstream: before its response headers (504 after) "
        "and between two chunks of a body (the exchange is then truncated).",
    )
    client_gone_drain_s: float = Field(
        900.0, ge=0, le=86400,
        description="After a client disconnects, how long runtap keeps reading the upstream's "
        "stream so the run is still recorded (runs expire after about 10 minutes).",
    )


class RecorderSettings(_Section):
    db: str = Field("./runtap.duckdb", description="The DuckDB file of the recording.")
    spill_path: str = Field(
        "", description="JSONL file for rows the database refused; empty means <db>.spill.jsonl."
    )
    record_content: bool = Field(
        True, description="Store bodies, event data, tool arguments/outputs and message text. "
        "When false they are NULL; ids, statuses, timings and usage are still recorded.",
    )
    # Why 250 ms and 20,000 rows: DuckDB charges ~4-9 ms per INSERT ... ON CONFLICT statement
    # whatever its size, and a batch writes one per table, so few large batches cost far less
    # CPU than many small ones (proxy CPU per streamed run 2.9 -> 2.2 ms against 50 ms / 5,000).
    batch_max_rows: int = Field(20_000, gt=0, le=1_000_000, description="Most rows per write transaction.")
    batch_interval_ms: float = Field(
        250.0, gt=0, le=60_000,
        description="Longest a row waits in the queue before its batch is written; with a SIGKILL "
        "this is about how much recent recording can be lost.",
    )
    # Why 250,000 (~500 MB): the overflow path commits ~50,000 rows/s against ~140,000 from memory
    # (rows are encoded, decoded and validated again), so it is a guard against running out of
    # memory in a long overload, not for bursts: the benchmark's c=32 rounds queue up to ~150,000.
    max_queue_rows: int = Field(
        250_000, gt=0, le=100_000_000,
        description="Most rows the writer's queue keeps in memory (~2 KB each); beyond it the queue overflows to "
        "<db>.backlog.jsonl and is committed from there in order (the relay never waits).",
    )
    writer_nice: int = Field(
        0, ge=0, le=19,
        description="How much lower the writer thread's scheduling priority is than the relay's (Linux nice "
        "steps; 0 = the same): when every core is busy the relay gets them first and the recording catches up after.",
    )
    max_tracked_runs: int = Field(
        50_000, gt=0, le=10_000_000, description="Runs whose state is kept in memory (least recent evicted)."
    )
    abandoned_turn_s: float = Field(
        3600.0, gt=0, le=30 * 86400,
        description="A Responses or Chat turn left open (waiting for its client's tool outputs, or a background "
        "response nobody polls) this long since runtap last saw it is ended with status abandoned, at the next "
        "create of that API runtap relays.",
    )
    duckdb_memory_limit: str = Field(
        "256MB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$",
        description="DuckDB's buffer pool in the proxy (its default is 80% of RAM, and the pool only grows); "
        "the recording and admin queries spill to disk beyond it.",
    )


class TelemetrySettings(_Section):
    metrics: bool = Field(
        True, description="Count requests, runs, steps, tool calls, tokens and latencies for GET /metrics. false "
        "leaves only the recorder's own health and the budgets' metrics there (what `make bench` compares "
        "observability against).",
    )
    otlp_endpoint: str = Field(
        "", description="OTLP/HTTP base URL for traces (spans go to <url>/v1/traces). Empty: the standard "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables, else no tracing at all.",
    )
    capture_content: bool = Field(
        False, description="Put instructions, messages, tool arguments and tool results on spans (opt-in).",
    )
    max_open_runs: int = Field(
        10_000, gt=0, le=1_000_000,
        description="Run spans held open at once; past it the oldest is ended as abandoned (bounded memory).",
    )
    abandoned_run_s: float = Field(
        3600.0, gt=0, le=7 * 86400,
        description="A run span with no terminal status is ended as abandoned at its expires_at, or this many "
        "seconds after it started when no expires_at is known.",
    )


class ModelPrice(_Section):
    input_usd_per_1m: float = Field(ge=0, le=100_000, description="USD per million prompt (input) tokens.")
    output_usd_per_1m: float = Field(ge=0, le=100_000, description="USD per million completion (output) tokens.")


class PricesSettings(_Section):
    models: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Per model name: replaces the shipped list price, or prices a model it lacks (an Azure "
        "deployment, a fine-tune). Written to the prices table at start.",
    )


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    recorder: RecorderSettings = RecorderSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    prices: PricesSettings = PricesSettings()
    budgets: BudgetsSettings = BudgetsSettings()

    @property
    def spill_path(self) -> Path:
        return Path(self.recorder.spill_path or self.recorder.db + ".spill.jsonl")


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected HOST:PORT with a port from 0 to 65535, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)



def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """File (path, else $RUNTAP_CONFIG), then environment, then `overrides` (from flags)."""
    env = os.environ if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
    for var, (section, name) in ENV_OVERRIDES.items():
        if env.get(var):
            data.setdefault(section, {})[name] = env[var]
    for section, values in (overrides or {}).items():
        for name, value in values.items():
            if value is not None:
                data.setdefault(section, {})[name] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from e
