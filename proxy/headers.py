"""Which headers never cross the proxy: the hop-by-hop set.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so they never
cross, and neither do the headers a `Connection` header names. The relay core's heads
(relay/heads.py) apply the set: `Host` is the upstream's, the body framing (`Content-Length` or
`Transfer-Encoding: chunked`) is the relay's own line for the bytes it sends, and everything else,
`Authorization` and `api-key` included, crosses untouched, in order (contract §3).
"""

from __future__ import annotations

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
