"""Which requests are Chat Completions: `POST /chat/completions` after `/v1` or Azure's `/openai/v1`,
and Azure's `POST /openai/deployments/{deployment}/chat/completions` (protocol-responses.md §1)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from ..base import OTHER, Route

if TYPE_CHECKING:
    from ..base import Api

CREATE = "create_chat_completion"
_PATHS = (
    (re.compile(r"/(v1|openai/v1)/chat/completions/?$"), "/{prefix}/chat/completions"),
    (re.compile(r"/openai/deployments/[^/]+/chat/completions/?$"), "/openai/deployments/{deployment}/chat/completions"),
)


def classify(method: str, path: str, api: Api | None = None) -> Route:
    return _classify(method, path, api)


@lru_cache(maxsize=4096)
def _classify(method: str, path: str, api: Api | None) -> Route:
    if method != "POST":
        return OTHER
    for pattern, template in _PATHS:
        match = pattern.match(path)
        if match is not None:
            label = template.replace("{prefix}", match.group(1)) if match.groups() else template
            return Route(CREATE, f"POST {label}", api=api, creates_call=True)
    return OTHER
