from multidict import CIMultiDict, CIMultiDictProxy

from proxy.headers import HOP_BY_HOP, client_headers, upstream_headers


def _h(*pairs):
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_set_is_pinned():
    assert frozenset({
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }) == HOP_BY_HOP


def test_upstream_headers_keep_auth_and_drop_hop_by_hop_host_and_length():
    got = upstream_headers(_h(
        ("Host", "127.0.0.1:8080"), ("Authorization", "Bearer sk-x"), ("api-key", "k"),
        ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"), ("OpenAI-Beta", "assistants=v2"), ("Accept-Encoding", "gzip"),
    ), keep_length=False)
    assert list(got.items()) == [
        ("Authorization", "Bearer sk-x"), ("api-key", "k"), ("OpenAI-Beta", "assistants=v2"),
        ("Accept-Encoding", "gzip"),
    ]


def test_streamed_bodies_keep_their_content_length():
    got = upstream_headers(_h(("Content-Length", "12"), ("Host", "x")), keep_length=True)
    assert list(got.items()) == [("Content-Length", "12")]


def test_client_headers_keep_everything_end_to_end_in_order_with_duplicates():
    got = client_headers(_h(
        ("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"), ("x-request-id", "req_1"), ("Keep-Alive", "timeout=5"),
        ("Content-Encoding", "gzip"),
    ))
    assert list(got.items()) == [
        ("Content-Type", "text/event-stream"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("x-request-id", "req_1"), ("Content-Encoding", "gzip"),
    ]
