"""WebSocket frames (RFC 6455) and permessage-deflate (RFC 7692) as the tunnel relays them: sans-io.

The tunnel (relay/tunnel.py) writes the upstream's bytes on as they come; runtap's copy goes through
a `FrameReader` (whole frames, unmasked) and a `Messages` (fragments joined, inflated) per
direction. Client frames are read before they are relayed, so budgets can refuse a
`response.create` (socket_tap.py): each frame comes with its exact bytes to relay. Memory is
bounded: a frame whose payload would take its message past `max_message` is skipped as it
arrives, never held (its message is then unreadable, `payload` None). Nothing here changes what is
relayed; a frame runtap cannot follow (a reserved length) stops the reading (`broken`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 1, 2, 8, 9, 10, 0
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    fin: bool
    compressed: bool
    """RSV1: the first frame of a permessage-deflate message."""
    payload: bytes | None
    """Unmasked; None when skipped (its message would pass the limit)."""
    raw: bytes | None
    """The frame's exact bytes, when the reader keeps them (`keep_raw`); of a skipped frame, the
    piece that just arrived (never held)."""
    partial: bool = False
    """A piece of a skipped frame, not its end: only the last piece (False) stands for the frame."""


@dataclass(frozen=True, slots=True)
class Message:
    opcode: int
    """TEXT or BINARY (a fragmented message has its first frame's), or a control opcode."""
    payload: bytes | None
    """Joined and inflated; None when it could not be read (over the limit, a broken deflate)."""
    compressed: bool


def deflate_of(extensions: str | None) -> tuple[bool, bool]:
    """From a 101's `Sec-WebSocket-Extensions`: (permessage-deflate agreed, the client compresses
    each message on its own: `client_no_context_takeover`)."""
    for offer in (extensions or "").split(","):
        params = [p.strip().lower() for p in offer.split(";")]
        if params and params[0] == "permessage-deflate":
            return True, "client_no_context_takeover" in params
    return False, False


class FrameReader:
    """One direction's bytes → whole frames. `masked`: client frames (each masked, RFC 6455 §5.3)."""

    def __init__(self, *, masked: bool, max_message: int, keep_raw: bool = False) -> None:
        self.masked = masked
        self.max_message = max_message
        self.keep_raw = keep_raw
        self._buffer = bytearray()
        self._skip = 0
        """Payload bytes of a skipped frame still to come (dropped as they arrive)."""
        self._skipped: tuple[int, bool, bool] | None = None
        self._message_size = 0
        self.broken = False
        """The framing could not be followed: nothing more is read."""

    @property
    def at_boundary(self) -> bool:
        """No frame is half-way."""
        return not self._buffer and not self._skip

    def take_buffered(self) -> bytes:
        """The bytes of a frame not whole yet, handed back (the reading stops: they are relayed raw)."""
        out = bytes(self._buffer)
        self._buffer.clear()
        self.broken = True
        return out

    def feed(self, data: bytes) -> list[Frame]:
        if self.broken:
            return []
        frames: list[Frame] = []
        if self._skip:
            used = min(self._skip, len(data))
            self._skip -= used
            piece, data = data[:used], data[used:]
            frames.append(self._skipped_frame(piece if self.keep_raw else None, partial=bool(self._skip)))
            if self._skip:
                return frames
        buffer: bytes | bytearray
        if self._buffer:
            buffer = self._buffer
            buffer += data  # amortised O(1): a large frame in many reads is read in O(its size)
        else:
            buffer = data  # nothing half-way (the usual read): frames are cut from the read itself
        at, n = 0, len(buffer)
        while n - at >= 2:
            b0, b1 = buffer[at], buffer[at + 1]
            length, head = b1 & 0x7F, 2
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
                    break
            masked = bool(b1 & 0x80)
            if masked:
                head += 4
            if n - at < head:
                break
            opcode, fin, compressed = b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40)
            if opcode < 8 and self._message_size + length > self.max_message:
                # Too big to hold: its payload is passed on in pieces as it comes, never buffered.
                available = min(length, n - at - head)
                piece = bytes(buffer[at:at + head + available]) if self.keep_raw else None
                at += head + available
                self._message_size = 0 if fin else self._message_size + length
                if available < length:
                    self._skip, self._skipped = length - available, (opcode, fin, compressed)
                    frames.append(Frame(opcode, fin, compressed, None, piece, partial=True))
                    break
                frames.append(Frame(opcode, fin, compressed, None, piece))
                continue
            if n - at < head + length:
                break
            payload = bytes(buffer[at + head:at + head + length])
            if masked:
                payload = _unmask(payload, bytes(buffer[at + head - 4:at + head]))
            raw = bytes(buffer[at:at + head + length]) if self.keep_raw else None
            at += head + length
            if opcode < 8:
                self._message_size = 0 if fin else self._message_size + length
            frames.append(Frame(opcode, fin, compressed, payload, raw))
        if buffer is self._buffer:
            del buffer[:at]
        elif at < n:
            self._buffer += buffer[at:]
        return frames

    def _skipped_frame(self, piece: bytes | None, *, partial: bool) -> Frame:
        assert self._skipped is not None
        opcode, fin, compressed = self._skipped
        if not partial:
            self._skipped = None
        return Frame(opcode, fin, compressed, None, piece, partial=partial)


class Messages:
    """Frames → messages: fragments joined, permessage-deflate inflated (one context per direction:
    a fresh-context message decodes the same through it), each message at most `max_message`."""

    def __init__(self, *, max_message: int, deflate: bool) -> None:
        self.max_message = max_message
        self.deflate = deflate
        self._inflate = zlib.decompressobj(-15) if deflate else None
        self._parts: list[bytes] | None = []
        self._opcode = 0
        self._compressed = False
        self.open = False
        """A fragmented message has begun and not ended."""

    def add(self, frame: Frame) -> Message | None:
        if frame.opcode >= 8:  # control frames: never fragmented, never compressed
            return Message(frame.opcode, frame.payload, False)
        if frame.fin and frame.opcode != CONTINUATION and not (frame.compressed and self.deflate):
            self.open = False  # a whole message in one frame (a server's usual): nothing to join
            if self._parts:
                self._parts = []
            return Message(frame.opcode, frame.payload, False)
        if frame.opcode != CONTINUATION:
            self._opcode, self._compressed = frame.opcode, frame.compressed and self.deflate
            self._parts = []
        if self._parts is not None:
            if frame.payload is None:
                self._parts = None  # over the limit: unreadable
            else:
                self._parts.append(frame.payload)
        self.open = not frame.fin
        if not frame.fin:
            return None
        data = None if self._parts is None else b"".join(self._parts)
        self._parts = []
        if self._compressed:
            data = self._inflated(data)
        return Message(self._opcode, data, self._compressed)

    def _inflated(self, data: bytes | None) -> bytes | None:
        assert self._inflate is not None
        if data is None:
            self._inflate = zlib.decompressobj(-15)  # its history is lost with the message: best effort on
            return None
        try:
            out = self._inflate.decompress(data + _DEFLATE_TAIL, self.max_message + 1)
        except zlib.error:
            self._inflate = zlib.decompressobj(-15)
            return None
        if len(out) > self.max_message or self._inflate.unconsumed_tail:
            self._inflate = zlib.decompressobj(-15)  # a bomb, or over the limit: not read
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
