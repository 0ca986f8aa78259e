"""Which Assistants route a request is, from its method and path alone.

Assistants routes are recognised after either prefix, `/v1/...` (OpenAI-style) or `/openai/...`
(Azure OpenAI), contract §3. The template (`POST /v1/threads/{thread_id}/runs`) is a bounded
metric label; the ids are for rows and spans.
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
    CREATE_THREAD_AND_RUN = "create_thread_and_run"
    CREATE_RUN = "create_run"
    SUBMIT_TOOL_OUTPUTS = "submit_tool_outputs"
    GET_RUN = "get_run"
    CANCEL_RUN = "cancel_run"
    LIST_RUNS = "list_runs"
    LIST_STEPS = "list_steps"
    GET_STEP = "get_step"
    MESSAGES = "messages"
    THREAD = "thread"
    OTHER = "other"


_RUN_CREATING = frozenset(
    {RouteKind.CREATE_THREAD_AND_RUN, RouteKind.CREATE_RUN, RouteKind.SUBMIT_TOOL_OUTPUTS}
)

_ID = r"([^/]+)"
# (method, regex after the prefix, kind, template after the prefix). Order matters: first match wins.
_TABLE: tuple[tuple[str, re.Pattern[str], RouteKind, str], ...] = tuple(
    (method, re.compile(pattern + r"/?$"), kind, template)
    for method, pattern, kind, template in (
        ("POST", r"/threads/runs", RouteKind.CREATE_THREAD_AND_RUN, "/threads/runs"),
        ("POST", rf"/threads/{_ID}/runs", RouteKind.CREATE_RUN, "/threads/{thread_id}/runs"),
        ("GET", rf"/threads/{_ID}/runs", RouteKind.LIST_RUNS, "/threads/{thread_id}/runs"),
        ("POST", rf"/threads/{_ID}/runs/{_ID}/submit_tool_outputs", RouteKind.SUBMIT_TOOL_OUTPUTS,
         "/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"),
        ("POST", rf"/threads/{_ID}/runs/{_ID}/cancel", RouteKind.CANCEL_RUN,
         "/threads/{thread_id}/runs/{run_id}/cancel"),
        ("GET", rf"/threads/{_ID}/runs/{_ID}/steps", RouteKind.LIST_STEPS,
         "/threads/{thread_id}/runs/{run_id}/steps"),
        ("GET", rf"/threads/{_ID}/runs/{_ID}/steps/{_ID}", RouteKind.GET_STEP,
         "/threads/{thread_id}/runs/{run_id}/steps/{step_id}"),
        ("GET", rf"/threads/{_ID}/runs/{_ID}", RouteKind.GET_RUN, "/threads/{thread_id}/runs/{run_id}"),
        ("POST", rf"/threads/{_ID}/runs/{_ID}", RouteKind.GET_RUN, "/threads/{thread_id}/runs/{run_id}"),
        ("*", rf"/threads/{_ID}/messages(?:/[^/]+)?", RouteKind.MESSAGES, "/threads/{thread_id}/messages"),
        ("*", r"/threads", RouteKind.THREAD, "/threads"),
        ("*", rf"/threads/{_ID}", RouteKind.THREAD, "/threads/{thread_id}"),
    )
)
_PREFIXES = ("/v1", "/openai")


def classify(method: str, path: str, api: Api | None = None) -> Route:
    """The Assistants route of a request (`api`: the Api the route names), `OTHER` when it has none."""
    return _classify(method, path, api)


@lru_cache(maxsize=4096)
def _classify(method: str, path: str, api: Api | None) -> Route:
    for prefix in _PREFIXES:
        if path.startswith(prefix + "/"):
            rest = path[len(prefix):]
            break
    else:
        return OTHER
    for want, pattern, kind, template in _TABLE:
        if want != "*" and want != method:
            continue
        match = pattern.match(rest)
        if match is None:
            continue
        ids = match.groups()
        # POST .../runs/{id} modifies a run (metadata) and returns it, like a poll does.
        label = f"{method} {prefix}{template}"
        return Route(
            kind,
            label,
            thread_id=ids[0] if ids else None,
            run_id=ids[1] if len(ids) > 1 and kind is not RouteKind.MESSAGES else None,
            step_id=ids[2] if len(ids) > 2 else None,
            api=api,
            creates_run=kind in _RUN_CREATING,
            continues_run=kind is RouteKind.SUBMIT_TOOL_OUTPUTS,
        )
    return OTHER
