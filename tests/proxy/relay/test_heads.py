"""relay/heads.py: the heads runtap writes, byte for byte, and the parsed upstream URL.

Pinned: hop-by-hop headers and the headers a `Connection` header names never cross either way;
everything else crosses in its order, duplicates and the sender's spelling kept; Host is always
the upstream's; the framing line is the relay's own; runtap's own answers are whole responses.
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import errors
from proxy.headers import HOP_BY_HOP
from proxy.relay.heads import (
    CONTINUE,
    LAST_CHUNK,
    RawHeaders,
    Upstream,
    answer_bytes,
    chunk,
    connection_tokens,
    header,
    request_head,
    response_head,
)

UPSTREAM = Upstream.parse("http://127.0.0.1:9999")


def lines_of(head: bytes) -> list[bytes]:
    """The header lines of a head (without the start line and the blank line that ends it)."""
    assert head.endswith(b"\r\n\r\n"), head
    return head[:-4].split(b"\r\n")[1:]


class _Parsed:
    def __init__(self) -> None:
        self.headers: RawHeaders = []
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


# -- request_head ------------------------------------------------------------------------------------


def test_request_head_drops_hop_by_hop_and_connection_named_headers_keeping_order_and_duplicates():
    head = request_head(b"POST", b"/v1/threads?x=1", [
        (b"host", b"client.example"), (b"X-First", b"1"), (b"Connection", b"keep-alive, X-Private , x-other"),
        (b"X-Private", b"secret"), (b"Keep-Alive", b"timeout=5"), (b"Proxy-Authorization", b"Basic x"),
        (b"Proxy-Connection", b"keep-alive"), (b"TE", b"trailers"), (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"h2c"), (b"Content-Length", b"3"),
        (b"Expect", b"100-continue"), (b"X-Dup", b"a"), (b"x-other", b"gone"), (b"x-dup", b"b"),
        (b"Authorization", b"Bearer sk-1"),
    ], UPSTREAM, b"Content-Length: 3")
    assert head.startswith(b"POST /v1/threads?x=1 HTTP/1.1\r\n")
    assert lines_of(head) == [b"Host: 127.0.0.1:9999", b"X-First: 1", b"X-Dup: a", b"x-dup: b",
                              b"Authorization: Bearer sk-1", b"Content-Length: 3"]


def test_request_head_host_is_the_upstreams_even_when_the_client_sends_several():
    head = request_head(b"GET", b"/v1/models", [(b"Host", b"a"), (b"HOST", b"b")],
                        Upstream.parse("https://api.openai.com"), None)
    assert lines_of(head) == [b"Host: api.openai.com"]


def test_request_head_prefixes_the_upstream_base_path_and_has_no_framing_without_a_body():
    head = request_head(b"GET", b"/openai/threads/t_1?api-version=2024", [(b"Accept", b"*/*")],
                        Upstream.parse("http://127.0.0.1:9999/base/"), None)
    assert head == (b"GET /base/openai/threads/t_1?api-version=2024 HTTP/1.1\r\nHost: 127.0.0.1:9999\r\n"
                    b"Accept: */*\r\n\r\n")


def test_request_head_for_an_upgrade_keeps_upgrade_and_connection_only():
    head = request_head(b"GET", b"/v1/realtime", [
        (b"Host", b"x"), (b"Connection", b"Upgrade, X-Named"), (b"Upgrade", b"websocket"), (b"X-Named", b"1"),
        (b"Keep-Alive", b"5"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"TE", b"trailers"),
    ], UPSTREAM, None, upgrade=True)
    assert lines_of(head) == [b"Host: 127.0.0.1:9999", b"Connection: Upgrade, X-Named", b"Upgrade: websocket",
                              b"X-Named: 1", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12)
_VALUE = st.binary(max_size=20).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7e))
_NAME = st.one_of(_TOKEN, st.sampled_from([*sorted(HOP_BY_HOP), "Host", "Content-Length", "Expect", "X-Named"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=12))
def test_request_head_parses_back_to_the_end_to_end_headers_in_order(headers: list[tuple[str, bytes]]):
    raw: RawHeaders = [(name.encode(), value) for name, value in headers]
    named = connection_tokens(raw)
    dropped = {n.encode() for n in HOP_BY_HOP} | {b"host", b"content-length", b"expect"} | named
    head = request_head(b"PUT", b"/p", raw, UPSTREAM, b"Content-Length: 0")
    parsed = _Parsed()
    httptools.HttpRequestParser(parsed).feed_data(head)
    assert parsed.complete and parsed.url == b"/p"
    assert parsed.headers == [(b"Host", b"127.0.0.1:9999"),
                              *[(n, v) for n, v in raw if n.lower() not in dropped],
                              (b"Content-Length", b"0")]


# -- response_head -----------------------------------------------------------------------------------


def test_response_head_drops_hop_by_hop_length_and_named_headers_and_keeps_the_rest_in_order():
    head = response_head(201, b"Created Here", [
        (b"Content-Type", b"application/json"), (b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"),
        (b"Content-Length", b"10"), (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"),
        (b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Trailer", b"X-Checksum"), (b"Upgrade", b"h2"),
        (b"x-request-id", b"req_1"),
    ], b"Content-Length: 10", close=False)
    assert head.startswith(b"HTTP/1.1 201 Created Here\r\n")
    assert lines_of(head) == [b"Content-Type: application/json", b"set-cookie: a=1", b"Set-Cookie: b=2",
                              b"x-request-id: req_1", b"Content-Length: 10"]


def test_response_head_says_connection_close_when_runtap_closes_after():
    head = response_head(200, b"OK", [(b"Connection", b"keep-alive"), (b"X-A", b"1")], b"Transfer-Encoding: chunked",
                         close=True)
    assert lines_of(head) == [b"X-A: 1", b"Transfer-Encoding: chunked", b"Connection: close"]


def test_response_head_without_framing_has_none_of_its_own():
    assert response_head(204, b"No Content", [(b"Content-Length", b"0")], None, close=False) == \
        b"HTTP/1.1 204 No Content\r\n\r\n"


# -- Upstream.parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "want"), [
    ("http://127.0.0.1:9999", ("http", "127.0.0.1", 9999, b"127.0.0.1:9999", b"")),
    ("http://example.com", ("http", "example.com", 80, b"example.com", b"")),
    ("http://example.com:80/", ("http", "example.com", 80, b"example.com", b"")),
    ("https://api.openai.com", ("https", "api.openai.com", 443, b"api.openai.com", b"")),
    ("https://api.openai.com:8443/v0/", ("https", "api.openai.com", 8443, b"api.openai.com:8443", b"/v0")),
    ("https://NAME.openai.azure.com/", ("https", "name.openai.azure.com", 443, b"name.openai.azure.com", b"")),
    ("http://[::1]:8080/a/b", ("http", "::1", 8080, b"[::1]:8080", b"/a/b")),
    ("https://[2001:db8::1]", ("https", "2001:db8::1", 443, b"[2001:db8::1]", b"")),
    ("http://bücher.example", ("http", "bücher.example", 80, b"xn--bcher-kva.example", b"")),
])
def test_upstream_parse(url: str, want: tuple[str, str, int, bytes, bytes]):
    up = Upstream.parse(url)
    assert (up.scheme, up.host, up.port, up.host_header, up.base_path) == want
    assert up.tls is (want[0] == "https")


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com", "localhost:8080", "http://", "https:///path",
                                 ""])
def test_upstream_parse_refuses_what_is_not_an_http_url(url: str):
    with pytest.raises(ValueError, match="upstream must be an http"):
        Upstream.parse(url)


# -- answer_bytes --------------------------------------------------------------------------------------


def _split_answer(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, lines, body


def test_answer_bytes_is_a_whole_response_with_its_length_and_type():
    response = errors.upstream_unreachable("ClientConnectorError")
    status, lines, body = _split_answer(answer_bytes(response, close=False))
    assert status == b"HTTP/1.1 502 Bad Gateway"
    assert body == response.body
    assert lines == [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]


def test_answer_bytes_closing_and_head_only():
    response = errors.budget_exceeded("over budget", 30)
    data = answer_bytes(response, close=True, head_only=True)
    status, lines, body = _split_answer(data)
    assert status == b"HTTP/1.1 429 Too Many Requests"
    assert body == b"" and data.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(response.body) in lines  # HEAD: the length a GET would have
    assert lines[-1] == b"Connection: close"
    assert b"retry-after: 30" in [line.lower() for line in lines]
    assert b"x-should-retry: false" in [line.lower() for line in lines]


def test_answer_bytes_parses_as_exactly_one_response():
    response = errors.request_too_large(1000)
    data = answer_bytes(response, close=False) * 2  # two answers back to back: each framed by its length

    class Count:
        n = 0
        bodies: list[bytes] = []

        def on_body(self, body: bytes) -> None:
            self.bodies.append(body)

        def on_message_complete(self) -> None:
            self.n += 1

    counter = Count()
    httptools.HttpResponseParser(counter).feed_data(data)
    assert counter.n == 2 and b"".join(counter.bodies) == response.body * 2


# -- small pieces ----------------------------------------------------------------------------------------


def test_connection_tokens_and_header_lookup():
    headers: RawHeaders = [(b"Connection", b"Keep-Alive, X-A"), (b"connection", b" ,x-b,"), (b"X-A", b"1"),
                           (b"x-a", b"2")]
    assert connection_tokens(headers) == {b"keep-alive", b"x-a", b"x-b"}
    assert header(headers, b"x-a") == b"1"
    assert header(headers, b"x-missing") is None


def test_chunk_framing_and_constants():
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
