"""Which headers cross: the hop-by-hop set (headers.py), applied by the relay core's heads (relay/heads.py)."""

from __future__ import annotations

from proxy.headers import HOP_BY_HOP
from proxy.relay.heads import Upstream, request_head, response_head

UPSTREAM = Upstream.parse("http://127.0.0.1:9999")


def _lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


def test_hop_by_hop_set_is_pinned():
    assert frozenset({
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }) == HOP_BY_HOP


def test_upstream_headers_keep_auth_and_drop_hop_by_hop_host_and_length():
    head = request_head(b"POST", b"/v1/threads", [
        (b"Host", b"127.0.0.1:8080"), (b"Authorization", b"Bearer sk-x"), (b"api-key", b"k"),
        (b"Connection", b"keep-alive, X-Private"), (b"X-Private", b"1"), (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"12"), (b"OpenAI-Beta", b"assistants=v2"), (b"Accept-Encoding", b"gzip"),
    ], UPSTREAM, b"Content-Length: 12")
    assert head.startswith(b"POST /v1/threads HTTP/1.1\r\n")
    assert _lines(head) == [
        b"Host: 127.0.0.1:9999", b"Authorization: Bearer sk-x", b"api-key: k", b"OpenAI-Beta: assistants=v2",
        b"Accept-Encoding: gzip", b"Content-Length: 12",
    ]


def test_the_body_framing_is_the_relays_own_line():
    head = request_head(b"POST", b"/v1/files", [(b"Content-Length", b"99"), (b"Host", b"x")], UPSTREAM,
                        b"Transfer-Encoding: chunked")
    assert _lines(head) == [b"Host: 127.0.0.1:9999", b"Transfer-Encoding: chunked"]


def test_client_headers_keep_everything_end_to_end_in_order_with_duplicates():
    head = response_head(200, b"OK", [
        (b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"), (b"x-request-id", b"req_1"), (b"Keep-Alive", b"timeout=5"),
        (b"Content-Encoding", b"gzip"),
    ], None, close=False)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert _lines(head) == [
        b"Content-Type: text/event-stream", b"Set-Cookie: a=1", b"Set-Cookie: b=2", b"x-request-id: req_1",
        b"Content-Encoding: gzip",
    ]
