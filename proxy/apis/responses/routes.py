"""Which Responses API (and Conversations) route a request is, from its method and path alone.

Recognised after `/v1`, Azure's `/openai/v1` and Azure's preview `/openai` (with `api-version`,
which the relay keeps in the query), protocol-responses.md §1. The template is a bounded metric
label; the response id is for rows.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING

from ..base import OTHER, Route

if TYPE_CHECKING:
    from ..base import Api


class RouteKind(StrEnum):
    CREATE = "create_response"
    RETRIEVE = "retrieve_response"
    """A poll, or with `?stream=true` a resumed stream."""
    CANCEL = "cancel_response"
    DELETE = "delete_response"
    INPUT_ITEMS = "list_input_items"
    INPUT_TOKENS = "count_input_tokens"
    COMPACT = "compact"
    CONVERSATIONS = "conversations"
    SOCKET = "responses_socket"
    """`GET /responses` with `Upgrade: websocket`: the WebSocket mode (`responses.connect()`)."""


_ID = r"([^/]+)"
_TABLE: tuple[tuple[str, re.Pattern[str], RouteKind, str], ...] = tuple(
    (method, re.compile(pattern + r"/?$"), kind, template)
    for method, pattern, kind, template in (
        ("POST", r"/responses", RouteKind.CREATE, "/responses"),
        ("GET", r"/responses", RouteKind.SOCKET, "/responses"),
        ("POST", r"/responses/input_tokens", RouteKind.INPUT_TOKENS, "/responses/input_tokens"),
        ("POST", r"/responses/compact", RouteKind.COMPACT, "/responses/compact"),
        ("POST", rf"/responses/{_ID}/cancel", RouteKind.CANCEL, "/responses/{response_id}/cancel"),
        ("GET", rf"/responses/{_ID}/input_items", RouteKind.INPUT_ITEMS, "/responses/{response_id}/input_items"),
        ("GET", rf"/responses/{_ID}", RouteKind.RETRIEVE, "/responses/{response_id}"),
        ("DELETE", rf"/responses/{_ID}", RouteKind.DELETE, "/responses/{response_id}"),
        ("*", r"/conversations", RouteKind.CONVERSATIONS, "/conversations"),
        ("*", rf"/conversations/{_ID}", RouteKind.CONVERSATIONS, "/conversations/{conversation_id}"),
        ("*", rf"/conversations/{_ID}/items(?:/[^/]+)?", RouteKind.CONVERSATIONS,
         "/conversations/{conversation_id}/items"),
    )
)
_PREFIXES = ("/openai/v1", "/v1", "/openai")  # the longest first: /openai/v1/... is not /openai/{v1...}


def socket_create(socket: Route, api: Api) -> Route:
    """A `response.create` message on a socket of route `socket`: a create, recorded as `WS .../responses`."""
    return _socket_create(socket.template, api)


@lru_cache(maxsize=64)
def _socket_create(template: str, api: Api) -> Route:
    return Route(RouteKind.CREATE, "WS " + template.partition(" ")[2], api=api, creates_call=True, socket=True)


def classify(method: str, path: str, api: Api | None = None) -> Route:
    """The Responses route of a request (`api`: the Api the route names), `OTHER` when it has none."""
    return _classify(method, path, api)


@lru_cache(maxsize=4096)
def _classify(method: str, path: str, api: Api | None) -> Route:
    for prefix in _PREFIXES:
        if not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix):]
        for want, pattern, kind, template in _TABLE:
            if want != "*" and want != method:
                continue
            match = pattern.match(rest)
            if match is not None:
                ids = match.groups()
                response_id = ids[0] if ids and kind is not RouteKind.CONVERSATIONS else None
                return Route(kind, f"{method} {prefix}{template}", response_id=response_id, api=api,
                             creates_call=kind is RouteKind.CREATE, socket=kind is RouteKind.SOCKET)
    return OTHER
