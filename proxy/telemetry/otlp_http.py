"""OTLP/HTTP span export: span records, encoded by otlp_encode.py, POSTed to the traces endpoint.

runtap's own exporter, so that a batch goes from records to bytes without the SDK's span objects
and protobuf encoder (otlp_encode.py says what that saves). It runs on the export thread only
(span_export.py) and behaves as the SDK's OTLP/HTTP exporter does, reading the same variables,
`OTEL_EXPORTER_OTLP_TRACES_*` first, then `OTEL_EXPORTER_OTLP_*`:
- `HEADERS` (`key=value,...`, URL-encoded), `COMPRESSION` (`gzip`, `deflate`, `none`),
  `TIMEOUT` (seconds per export, retries included; 10 by default);
- `CERTIFICATE` (CA bundle), `CLIENT_CERTIFICATE` and `CLIENT_KEY` (mTLS) for an https endpoint;
- retries: a refused or broken connection and 429, 502, 503, 504 are retried with exponential
  backoff (1, 2, 4 s, ±20%, or the server's `Retry-After` seconds) while the timeout allows; any
  other answer outside 2xx-3xx fails the batch at once.
One keep-alive connection is reused across exports. A batch that fails is logged and reported
(tracing.CountingExporter counts it); nothing is raised.

Not implemented here: the SDK's credential-provider sessions
(`OTEL_PYTHON_EXPORTER_OTLP_HTTP_*CREDENTIAL_PROVIDER`) and HTTP proxies (`HTTP(S)_PROXY`, which the
SDK's `requests` honours). With either in play, tracing.py uses the SDK's exporter instead.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry.util.re import parse_env_headers

from .. import __version__
from .otlp_encode import OtlpEncoder
from .spans import SpanRecord

log = logging.getLogger("runtap.tracing")

DEFAULT_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 6
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def _setting(env: Mapping[str, str], name: str) -> str | None:
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or None


def _compressor(name: str | None) -> tuple[Callable[[bytes], bytes] | None, str | None]:
    match (name or "none").strip().lower():
        case "gzip":
            return gzip.compress, "gzip"
        case "deflate":
            return zlib.compress, "deflate"
        case "none":
            return None, None
        case other:
            log.warning("unsupported OTLP compression %r; sending uncompressed", other)
            return None, None


def _timeout_s(value: str | None) -> float:
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        log.warning("invalid OTLP timeout %r; using %s s", value, DEFAULT_TIMEOUT_S)
        return DEFAULT_TIMEOUT_S


def _certifi_bundle() -> str | None:
    try:
        import certifi  # optional: a dependency of requests, hence of the SDK's exporter
    except ImportError:
        return None
    return str(certifi.where())


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from collectors; the backoff applies
        return None


class OtlpHttpExporter:
    """POSTs encoded span batches to `endpoint` (`http(s)://host[:port]/path`)."""

    def __init__(self, endpoint: str, encoder: OtlpEncoder, env: Mapping[str, str]) -> None:
        self._encoder = encoder
        url = urlsplit(endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._compress, encoding = _compressor(_setting(env, "COMPRESSION"))
        self._timeout_s = _timeout_s(_setting(env, "TIMEOUT"))
        # Lower-case names, as the SDK's exporter sends them: the variable's headers can replace ours.
        self._headers = {"content-type": "application/x-protobuf", "user-agent": f"runtap/{__version__}"}
        self._headers.update(parse_env_headers(_setting(env, "HEADERS") or "", liberal=True))
        if encoding is not None:
            self._headers.setdefault("content-encoding", encoding)
        self._connection: http.client.HTTPConnection | None = None
        self._stopping = threading.Event()
        # As with the SDK's exporter, a bad endpoint or certificate fails (and counts) each export;
        # it does not stop the proxy.
        self._ssl: ssl.SSLContext | None = None
        try:
            self._port = url.port or (443 if self._https else 80)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError("not an http(s) URL")
            if self._https:
                self._ssl = self._tls_context(env)
            self._usable = True
        except (ValueError, OSError) as error:  # ssl.SSLError is an OSError
            # The host only: a URL may carry user:password@.
            log.error("OTLP traces endpoint on %r unusable (%s): spans will be dropped", urlsplit(endpoint).hostname,
                      error)
            self._usable = False

    @staticmethod
    def _tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
        # Without a CA bundle of the environment's, trust what the SDK's exporter trusted: requests
        # verifies with certifi's bundle (installed with it), not the system's.
        context = ssl.create_default_context(cafile=_setting(env, "CERTIFICATE") or _certifi_bundle())
        certificate = _setting(env, "CLIENT_CERTIFICATE")
        if certificate:
            context.load_cert_chain(certificate, _setting(env, "CLIENT_KEY"))
        return context

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        if not self._usable or self._stopping.is_set():
            return False  # shut down: a batch still queued is not worth a connection and a timeout
        body = self._encoder.encode(spans)
        if self._compress is not None:
            body = self._compress(body)
        deadline = time.monotonic() + self._timeout_s
        for attempt in range(MAX_ATTEMPTS):
            status, retry_after, error = self._post(body, max(0.001, deadline - time.monotonic()))
            if status is not None and 200 <= status < 400:
                return True
            what = f"HTTP {status}" if status is not None else repr(error)
            if status is not None and status not in RETRYABLE_STATUSES:
                log.error("span export failed: %s from %s; %d spans dropped", what, self._host, len(spans))
                return False
            backoff = retry_after if retry_after is not None else 2**attempt * random.uniform(0.8, 1.2)
            if attempt + 1 == MAX_ATTEMPTS or backoff > deadline - time.monotonic() or self._stopping.is_set():
                log.error("span export failed: %s from %s, retries exhausted; %d spans dropped", what, self._host,
                          len(spans))
                return False
            log.warning("span export: %s from %s; retrying in %.2f s", what, self._host, backoff)
            if self._stopping.wait(backoff):
                return False
        return False

    def _post(self, body: bytes, timeout_s: float) -> tuple[int | None, float | None, Exception | None]:
        """One POST: (status, Retry-After seconds, None), or (None, None, the connection error)."""
        error: Exception | None = None
        # A kept-alive connection the collector closed fails at once: retry it once on a new one.
        for _ in range(2):
            connection = self._connect(timeout_s)
            try:
                connection.request("POST", self._target, body, self._headers)
                response = connection.getresponse()
                response.read()
            except _CONNECTION_ERRORS as exc:
                error = exc
                self._disconnect()
                continue
            if response.will_close:
                self._disconnect()
            return response.status, _retry_after_s(response.getheader("Retry-After")), None
        return None, None, error

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout_s, context=self._ssl)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._connection = connection
        else:
            connection.timeout = timeout_s
            if connection.sock is not None:
                connection.sock.settimeout(timeout_s)
        return connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def force_flush(self) -> bool:
        return True  # nothing is buffered here

    def shutdown(self) -> None:
        """Abort a retry in progress; close the connection."""
        self._stopping.set()
        self._disconnect()
