"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so they never
cross. `Host` is the upstream's, set by the client session from the upstream URL. Content-Length
and Transfer-Encoding of the request are recomputed by aiohttp for the body it sends; on the
response they are kept when the body is relayed unchanged (Content-Length) and dropped when
aiohttp re-frames it (Transfer-Encoding). Everything else, `Authorization` and `api-key`
included, is forwarded untouched (contract §3).
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never copied from the client: the session sets Host for the upstream; the body length is
# recomputed for the bytes actually sent (a recorded body is sent as bytes, the rest streamed).
_NOT_FORWARDED: frozenset[str] = HOP_BY_HOP | {"host", "content-length"}


def upstream_headers(client: CIMultiDictProxy[str], *, keep_length: bool) -> CIMultiDict[str]:
    """Headers for the upstream request. `keep_length` for bodies streamed through unchanged."""
    skip = HOP_BY_HOP | {"host"} if keep_length else _NOT_FORWARDED
    connection_named = _connection_tokens(client)
    return CIMultiDict(
        (k, v) for k, v in client.items() if k.lower() not in skip and k.lower() not in connection_named
    )


def client_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers for the client's response: the upstream's, less hop-by-hop ones."""
    connection_named = _connection_tokens(upstream)
    return CIMultiDict(
        (k, v) for k, v in upstream.items() if k.lower() not in HOP_BY_HOP and k.lower() not in connection_named
    )


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    # RFC 9110 §7.6.1: headers named in Connection are hop-by-hop for this message too.
    value = headers.get("connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())
