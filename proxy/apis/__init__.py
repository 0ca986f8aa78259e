"""The APIs runtap understands, each behind `base.Api`; `classify` is how the core finds one.

This is the one place that names them. Adding an API is adding its package here.
"""

from __future__ import annotations

from functools import lru_cache

from .assistants import API as ASSISTANTS
from .base import OTHER, Api, Route
from .chat import API as CHAT
from .responses import API as RESPONSES

APIS: tuple[Api, ...] = (ASSISTANTS, RESPONSES, CHAT)

__all__ = ["APIS", "OTHER", "Api", "Route", "classify"]


@lru_cache(maxsize=4096)
def classify(method: str, path: str) -> Route:
    """The route of a request: the first API that claims it, else `OTHER` (relayed, not parsed).
    Cached: the same few paths repeat, and this runs per request."""
    for api in APIS:
        route = api.classify(method, path)
        if route is not None:
            return route
    return OTHER
