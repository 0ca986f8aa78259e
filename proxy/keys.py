"""API key → fingerprint. The only module that ever holds a raw key.

`key_id = "sha256:" + first 16 hex digits of sha256(raw key)` (contract §5). The raw key is
read from the request headers here, hashed, and dropped; nothing returned from this module can
be turned back into the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


def fingerprint(raw_key: str) -> str:
    return "sha256:" + hashlib.sha256(raw_key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def key_id_from_headers(headers: Mapping[str, str]) -> str | None:
    """The caller's key_id from `Authorization: Bearer …` (OpenAI) or `api-key` (Azure)."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return fingerprint(token.strip())
    api_key = headers.get("api-key")
    if api_key and api_key.strip():
        return fingerprint(api_key.strip())
    return None
