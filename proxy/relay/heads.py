"""HTTP/1.1 heads as bytes: what runtap sends upstream, what it sends the client, and its own answers.

The relay core never re-serialises a body; it writes heads itself because the hop-by-hop headers
of one connection must not cross to the next (RFC 9110 §7.6.1, `proxy.headers.HOP_BY_HOP`). Names
and values cross as the bytes they came as, in their order, duplicates included (contract §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..headers import HOP_BY_HOP

RawHeaders = list[tuple[bytes, bytes]]

_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
# Never copied to the upstream: Host is the upstream's, the framing is runtap's own for the bytes it
# sends, and runtap answers `Expect: 100-continue` itself (it decides when the body is read).
_NOT_UPSTREAM = _HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_NOT_CLIENT = _HOP_BY_HOP | {b"content-length"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_HEAD_BYTES = 128 * 1024
"""A request or response head longer than this is refused (aiohttp's default line limit is 8 KiB;
an OpenAI request carries a key, a beta header and a trace context, far below)."""
MAX_HEADER_BYTES = 65536
"""One header line longer than this is refused (the limit the aiohttp relay had, max_field_size)."""


@dataclass(slots=True, frozen=True)
class Upstream:
    """Where requests go: the parsed `[server] upstream` URL."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    base_path: bytes

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, host_header.encode("idna"), parts.path.encode())


def connection_tokens(headers: RawHeaders) -> frozenset[bytes]:
    """Header names a `Connection` header lists: hop-by-hop for this message too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def header(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def request_head(method: bytes, target: bytes, headers: RawHeaders, upstream: Upstream,
                 framing: bytes | None, *, upgrade: bool = False) -> bytes:
    """The upstream request head. `framing` is the body's `Content-Length: n` or
    `Transfer-Encoding: chunked` line (without CRLF), None for no body. `upgrade` keeps `Upgrade` and
    `Connection`, so the upstream sees the handshake whole (relay/tunnel.py)."""
    named = connection_tokens(headers)
    skip = _NOT_UPSTREAM - {b"upgrade", b"connection"} if upgrade else _NOT_UPSTREAM | named
    lines = [b"%s %s%s HTTP/1.1" % (method, upstream.base_path, target), b"Host: " + upstream.host_header]
    lines += [name + b": " + value for name, value in headers if name.lower() not in skip]
    if framing is not None:
        lines.append(framing)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def response_head(status: int, reason: bytes, headers: RawHeaders, framing: bytes | None, *, close: bool) -> bytes:
    """The client's response head: the upstream's status, reason and headers less hop-by-hop ones,
    then the framing runtap relays the body with and, when it closes after, `Connection: close`."""
    named = connection_tokens(headers)
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [name + b": " + value for name, value in headers
              if name.lower() not in _NOT_CLIENT and name.lower() not in named]
    if framing is not None:
        lines.append(framing)
    if close:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def answer_bytes(response: web.Response, *, close: bool, head_only: bool = False) -> bytes:
    """runtap's own answer (errors.openai_error, a budget refusal) as the bytes of a response."""
    body = response.body if isinstance(response.body, bytes) else b""
    lines = [b"HTTP/1.1 %d %s" % (response.status, response.reason.encode("latin-1"))]
    if response.content_type and "Content-Type" not in response.headers:
        lines.append(b"Content-Type: " + response.content_type.encode("latin-1"))
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "connection", "transfer-encoding"):
            lines.append(f"{name}: {value}".encode("latin-1"))
    lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines) + (b"" if head_only else body)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
