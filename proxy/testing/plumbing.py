"""Request keys and list helpers shared by the fake upstream's route modules.

They live apart from ``fake_upstream.py`` so the per-API modules (Assistants there, Responses,
Conversations and Chat in their own files) can use them without importing the server class,
which imports them.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.testing.engine import ApiError
from proxy.testing.faults import Fault
from proxy.testing.streams import Json

STARTED = web.RequestKey("runtap_fake_started", float)
BODY = web.RequestKey("runtap_fake_body", bytes)
FAULT = web.RequestKey("runtap_fake_fault", Fault | None)  # type: ignore[arg-type]

BAD_JSON = ("We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.")


def json_body(request: web.Request, allowed: frozenset[str] | set[str], *, legacy: bool = False) -> Json:
    """The JSON object body, checked with :func:`check_keys`."""
    raw: bytes = request[BODY]
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, BAD_JSON) from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_JSON)
    check_keys(body, allowed, legacy=legacy)
    return body


def check_keys(body: Json, allowed: frozenset[str] | set[str], *, legacy: bool = False) -> None:
    """Unknown keys are rejected (``additionalProperties: false``), which catches a proxy injecting
    fields. The Responses-era endpoints say ``Unknown parameter`` (code ``unknown_parameter``);
    Chat Completions (``legacy``) says it the way the Assistants endpoints do."""
    for key in body:
        if key in allowed:
            continue
        if legacy:
            raise ApiError(400, f"Unrecognized request argument supplied: {key}")
        raise ApiError(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    check_metadata(body.get("metadata"))


def check_metadata(metadata: Any) -> None:
    """16 pairs, keys <= 64 chars, values <= 512 chars (protocol.md §4.3; the same for Responses
    and Conversations)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiError(400, "Invalid 'metadata': expected an object with at most 16 properties.",
                       param="metadata", code="invalid_value")
    for k, v in metadata.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise ApiError(400, f"Invalid 'metadata.{k}': keys must be at most 64 characters and values "
                                "strings of at most 512 characters.", param="metadata", code="invalid_value")


def page(items: list[Json], request: web.Request) -> Json:
    """A cursor page like the real list endpoints (default ``order=desc``, ``limit=20``)."""
    q = request.query
    try:
        limit = max(1, min(100, int(q.get("limit", "20"))))
    except ValueError:
        raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit",
                       code="invalid_type") from None
    seq = items if q.get("order", "desc") == "asc" else items[::-1]
    ids = [i["id"] for i in seq]
    if (after := q.get("after")) in ids:
        seq = seq[ids.index(after) + 1:]
    elif (before := q.get("before")) in ids:
        seq = seq[:ids.index(before)][-limit:]
    chosen = seq[:limit]
    return {"object": "list", "data": chosen, "first_id": chosen[0]["id"] if chosen else None,
            "last_id": chosen[-1]["id"] if chosen else None, "has_more": len(seq) > limit}
