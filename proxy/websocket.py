"""WebSocket frames (RFC 6455) and permessage-deflate (RFC 7692) as the tunnel relays them: sans-io.

The tunnel (relay/tunnel.py) writes every byte on as it comes; runtap's copy goes through a
`MessageReader` per direction, which yields whole messages (fragments joined, unmasked,
inflated). It never changes what is relayed: a frame runtap cannot read (a bad length, a
message over the limit, a broken deflate stream) costs the recording of that message, never the
socket. Client frames are read before they are relayed, so budgets can refuse a
`response.create` (socket_tap.py); `frame_end` says where each complete frame ends, so the
relay forwards whole frames.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 1, 2, 8, 9, 10, 0
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Message:
    opcode: int
    """TEXT, BINARY, CLOSE, PING or PONG (a fragmented message has its first frame's)."""
    payload: bytes | None
    """Unmasked and inflated; None when it could not be read (over the limit, a broken deflate)."""
    start: int
    """Where its first frame begins in the direction's stream (bytes fed since the start)."""
    end: int
    """Where its last frame ends."""


def deflate_of(extensions: str | None) -> tuple[bool, bool]:
    """From a 101's `Sec-WebSocket-Extensions`: (permessage-deflate agreed, the client compresses
    each message on its own: `client_no_context_takeover`)."""
    for offer in (extensions or "").split(","):
        params = [p.strip().lower() for p in offer.split(";")]
        if params and params[0] == "permessage-deflate":
            return True, "client_no_context_takeover" in params
    return False, False


class MessageReader:
    """One direction's frames → messages. `masked`: client frames (each masked, RFC 6455 §5.3)."""

    def __init__(self, *, masked: bool, max_message: int, deflate: bool = False) -> None:
        self.masked = masked
        self.max_message = max_message
        self.deflate = deflate
        self._inflate = zlib.decompressobj(-15) if deflate else None
        self._buffer = b""
        self._consumed = 0
        """Bytes of the stream before `_buffer`."""
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode = 0
        self._compressed = False
        self._overflow = False
        self._start = 0
        self.broken = False
        """The framing could not be followed (a reserved length, a frame over 2**63): nothing more is read."""

    @property
    def at_boundary(self) -> bool:
        """No frame is half-way: what was fed ends at a frame's end."""
        return not self._buffer

    def feed(self, data: bytes) -> list[Message]:
        if self.broken:
            return []
        buffer = self._buffer + data if self._buffer else data
        messages: list[Message] = []
        at = 0
        n = len(buffer)
        while True:
            if n - at < 2:
                break
            b0, b1 = buffer[at], buffer[at + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - at < 4:
                    break
                length, head = int.from_bytes(buffer[at + 2:at + 4]), 4
            elif length == 127:
                if n - at < 10:
                    break
                length, head = int.from_bytes(buffer[at + 2:at + 10]), 10
                if length >> 63:
                    self.broken = True
                    return messages
            masked = bool(b1 & 0x80)
            if masked:
                head += 4
            if n - at < head + length:
                break
            payload = buffer[at + head:at + head + length]
            if masked:
                payload = _unmask(payload, buffer[at + head - 4:at + head])
            start = self._consumed + at
            at += head + length
            message = self._frame(b0, payload, start, self._consumed + at)
            if message is not None:
                messages.append(message)
        self._consumed += at
        self._buffer = buffer[at:]
        return messages

    def _frame(self, b0: int, payload: bytes, start: int, end: int) -> Message | None:
        opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
        if opcode >= 8:  # control frames are never fragmented and never compressed
            return Message(opcode, payload, start, end)
        if opcode != CONTINUATION:
            self._opcode, self._compressed = opcode, bool(b0 & 0x40) and self.deflate
            self._parts, self._size, self._overflow, self._start = [], 0, False, start
        self._size += len(payload)
        if self._size > self.max_message:
            self._overflow, self._parts = True, []
        elif not self._overflow:
            self._parts.append(payload)
        if not fin:
            return None
        data = None if self._overflow else b"".join(self._parts)
        self._parts = []
        if data is not None and self._compressed:
            data = self._inflated(data)
        elif self._overflow and self._compressed:
            self._inflate = zlib.decompressobj(-15)  # its history is lost with the message: best effort on
        return Message(self._opcode, data, self._start, end)

    def _inflated(self, data: bytes) -> bytes | None:
        assert self._inflate is not None
        try:
            out = self._inflate.decompress(data + _DEFLATE_TAIL, self.max_message + 1)
        except zlib.error:
            self._inflate = zlib.decompressobj(-15)
            return None
        if len(out) > self.max_message or self._inflate.unconsumed_tail:
            self._inflate = zlib.decompressobj(-15)  # a bomb, or over the limit: not recorded
            return None
        return out


def _unmask(payload: bytes, key: bytes) -> bytes:
    # One big-int XOR in C: a Python loop per byte would cost a microsecond per 10 bytes.
    n = len(payload)
    if not n:
        return payload
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(n)


def server_text_frame(text: bytes) -> bytes:
    """An unmasked, uncompressed text frame from the server's side (runtap's own refusal)."""
    n = len(text)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2)
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8)
    return head + text


def close_frame(code: int, reason: str, *, masked: bool = False) -> bytes:
    """A close frame (runtap closing a socket it must not relay further); masked for the upstream."""
    payload = code.to_bytes(2) + reason.encode()[:120]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = b"\x00\x00\x00\x00"  # a zero key: a valid mask, and nothing to hide from a proxy's own frame
    return bytes((0x88, 0x80 | len(payload))) + key + payload
