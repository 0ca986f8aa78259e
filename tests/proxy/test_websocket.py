"""proxy/websocket.py against an independent implementation: frames built by the `websockets`
package (masked, fragmented, permessage-deflate with and without context takeover), fed in any split."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from proxy.websocket import (
    CLOSE,
    PING,
    TEXT,
    FrameReader,
    Message,
    Messages,
    close_frame,
    deflate_of,
    server_text_frame,
)

Texts = st.lists(st.text(min_size=0, max_size=300).map(str.encode), min_size=1, max_size=8)


def _frames(messages: list[bytes], *, mask: bool, deflate: PerMessageDeflate | None, pieces: int) -> list[bytes]:
    """Each message as `pieces` fragments (a ping between the first two), serialised by websockets."""
    out: list[bytes] = []
    extensions = [deflate] if deflate is not None else []
    for data in messages:
        step = max(1, -(-len(data) // pieces))
        chunks = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        for i, chunk in enumerate(chunks):
            opcode = Opcode.TEXT if i == 0 else Opcode.CONT
            out.append(Frame(opcode, chunk, fin=i == len(chunks) - 1).serialize(mask=mask, extensions=extensions))
            if i == 0 and len(chunks) > 1:
                out.append(Frame(Opcode.PING, b"are you there").serialize(mask=mask))
    return out


class Reader:
    """A direction as socket_tap.py reads it: frames, then messages."""

    def __init__(self, *, masked: bool, max_message: int, deflate: bool = False) -> None:
        self.frames = FrameReader(masked=masked, max_message=max_message, keep_raw=True)
        self.messages = Messages(max_message=max_message, deflate=deflate)
        self.raw: list[bytes] = []

    def feed(self, data: bytes) -> list[Message]:
        out = []
        for frame in self.frames.feed(data):
            self.raw.append(frame.raw or b"")
            if not frame.partial:
                message = self.messages.add(frame)
                if message is not None:
                    out.append(message)
        return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(Texts, st.booleans(), st.sampled_from(["none", "context", "fresh"]), st.integers(1, 4),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_of_any_frames_reads_the_same_messages(messages, mask, compression, pieces, cuts):
    deflate = None if compression == "none" else PerMessageDeflate(
        remote_no_context_takeover=False, local_no_context_takeover=compression == "fresh",
        remote_max_window_bits=15, local_max_window_bits=15)
    wire = b"".join(_frames(messages, mask=mask, deflate=deflate, pieces=pieces))
    reader = Reader(masked=mask, max_message=1 << 20, deflate=deflate is not None)
    seen = []
    for part in _split(wire, cuts):
        seen += reader.feed(part)
    texts = [m for m in seen if m.opcode == TEXT]
    assert [m.payload for m in texts] == messages
    assert {m.opcode for m in seen} <= {TEXT, PING}
    assert reader.frames.at_boundary and not reader.frames.broken and not reader.messages.open
    assert b"".join(reader.raw) == wire  # every frame's exact bytes, in order: what the relay forwards


def test_a_message_over_the_limit_or_a_bomb_is_not_read_and_the_next_one_is():
    big = b"x" * 5000
    deflate = PerMessageDeflate(False, False, 15, 15)
    wire = b"".join(_frames([big, b"small"], mask=True, deflate=deflate, pieces=1))
    assert len(wire) < 200  # 5000 bytes deflate to a few dozen: a bomb in miniature
    reader = Reader(masked=True, max_message=1000, deflate=True)
    over, small = reader.feed(wire)
    assert (over.payload, small.payload) == (None, b"small")


@settings(max_examples=60, deadline=None)
@given(st.integers(1200, 40_000), st.integers(1, 3), st.lists(st.integers(0, 100_000), max_size=12))
def test_a_frame_over_the_limit_is_passed_on_in_pieces_never_held(size, pieces, cuts):
    wire = b"".join(_frames([b"y" * size, b"after"], mask=True, deflate=None, pieces=pieces))
    reader = Reader(masked=True, max_message=1000)
    seen = []
    for part in _split(wire, cuts):
        seen += reader.feed(part)
        assert len(reader.frames._buffer) <= 1000 + 14  # at most one readable frame and a head are held
    assert [m.payload for m in seen if m.opcode == TEXT] == [None, b"after"]
    assert b"".join(reader.raw) == wire


def test_broken_framing_stops_reading_and_a_bad_deflate_costs_one_message():
    reader = Reader(masked=False, max_message=100)
    assert reader.feed(b"\x81\x7f\x80" + b"\x00" * 7) == [] and reader.frames.broken
    reader = Reader(masked=False, max_message=100, deflate=True)
    bad = bytes((0xC1, 3)) + b"\xff\xff\xff"  # RSV1 set: "compressed", but not deflate
    good = _frames([b"next"], mask=False, deflate=PerMessageDeflate(False, True, 15, 15), pieces=1)[0]
    first, second = reader.feed(bad + good)
    assert first.payload is None and second.payload == b"next"


def test_runtaps_own_frames_and_the_extension_header():
    reader = Reader(masked=False, max_message=1 << 20)
    [text] = reader.feed(server_text_frame(b'{"type":"error"}'))
    assert (text.opcode, text.payload) == (TEXT, b'{"type":"error"}')
    [long] = reader.feed(server_text_frame(b"y" * 70_000))
    assert long.payload == b"y" * 70_000
    [close] = Reader(masked=True, max_message=100).feed(close_frame(1008, "budget", masked=True))
    assert (close.opcode, close.payload) == (CLOSE, (1008).to_bytes(2) + b"budget")
    assert deflate_of("permessage-deflate; client_max_window_bits=15") == (True, False)
    assert deflate_of("x-other, permessage-deflate; client_no_context_takeover") == (True, True)
    assert deflate_of(None) == (False, False)
    assert zlib.decompressobj(-15).decompress(b"\x03\x00") == b""  # the empty block a sync flush ends in
