"""The one error shape runtap speaks, and the exceptions behind it.

Every error runtap makes itself reaches the client as the OpenAI error object (contract §4)::

    {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

so the openai SDK maps it onto its own exception classes (protocol.md §5.4). Anything else a
client sees is the upstream's own bytes.

Exception tree (raised inside runtap, never towards the client):

    RuntapError
    ├── ConfigError          the settings cannot be loaded or are unsafe (exit code 2)
    └── StoreError           the recording database cannot be opened (see store/writer.py)
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


class RuntapError(Exception):
    """Base of every exception runtap raises on purpose."""


class ConfigError(RuntapError):
    """The configuration is invalid, or would expose the admin listener without a token."""


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def openai_error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A response in the OpenAI error shape; the only way runtap answers with an error."""
    return web.Response(
        status=status,
        body=error_body(message, type_, code),
        content_type="application/json",
        headers=headers,
    )


def upstream_unreachable(detail: str) -> web.Response:
    return openai_error(502, f"runtap could not reach the upstream: {detail}", "upstream_error",
                        "upstream_unreachable")


def upstream_timeout(seconds: float) -> web.Response:
    return openai_error(504, f"the upstream sent no response within {seconds:g} s", "upstream_error",
                        "upstream_timeout")


def request_too_large(limit: int) -> web.Response:
    return openai_error(413, f"request body is larger than max_recorded_body_bytes ({limit} bytes)",
                        "invalid_request_error", "request_too_large")


def budget_exceeded(message: str, retry_after_s: int) -> web.Response:
    # x-should-retry: false, or the openai SDK would retry the 429 on its own (protocol.md §5).
    return openai_error(429, message, "budget_exceeded", "budget_exceeded",
                        headers={"retry-after": str(retry_after_s), "x-should-retry": "false"})


def invalid_request_target() -> web.Response:
    return openai_error(400, "runtap forwards origin-form request targets only (a path starting with /)",
                        "invalid_request_error", "invalid_request_target")
