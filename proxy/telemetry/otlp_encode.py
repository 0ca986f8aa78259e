"""Span records → an OTLP `ExportTraceServiceRequest` in protobuf bytes, written by hand (sans-io).

The SDK's encoder builds a protobuf object per span, per attribute and per value, ~55 us for one
of runtap's spans (a dozen attributes) on the export thread, which shares the GIL with the event
loop. Writing the wire format directly takes ~10 us: the messages involved are few and fixed
(opentelemetry-proto's `trace.proto`, `common.proto`, `resource.proto`), the resource and scope
are encoded once, and attribute keys (runtap's constants) once each. The output decodes to what
the SDK's `encode_spans` makes of the same spans (tests/proxy/test_otlp_encode.py checks it
against the SDK, through opentelemetry-proto).

Attribute values are runtap's own (str, bool, int, float, tuples of them); anything else is left
out (and logged), as the SDK would have refused it. The environment's attribute limits
(`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`, `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`) apply here, as the
SDK applies them when an attribute is set.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .spans import SpanRecord

log = logging.getLogger("runtap.tracing")

_VARINTS = [bytes([n]) for n in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_CACHED_KEYS = 1024

# Field tags (field number << 3 | wire type) of the messages written here.
_REQUEST_RESOURCE_SPANS = b"\x0a"
_RESOURCE_SPANS_RESOURCE, _RESOURCE_SPANS_SCOPE_SPANS, _RESOURCE_SPANS_SCHEMA_URL = b"\x0a", b"\x12", b"\x1a"
_RESOURCE_ATTRIBUTES = b"\x0a"
_SCOPE_SPANS_SCOPE, _SCOPE_SPANS_SPANS, _SCOPE_SPANS_SCHEMA_URL = b"\x0a", b"\x12", b"\x1a"
_SCOPE_NAME, _SCOPE_VERSION, _SCOPE_ATTRIBUTES = b"\x0a", b"\x12", b"\x1a"
_SPAN_TRACE_ID, _SPAN_SPAN_ID, _SPAN_PARENT_SPAN_ID = b"\x0a\x10", b"\x12\x08", b"\x22\x08"
_SPAN_NAME, _SPAN_KIND, _SPAN_START, _SPAN_END = b"\x2a", b"\x30", b"\x39", b"\x41"
_SPAN_ATTRIBUTE, _SPAN_DROPPED_ATTRIBUTES, _SPAN_STATUS, _SPAN_FLAGS = b"\x4a", b"\x50", b"\x7a", b"\x85\x01"
_STATUS_UNSET = _SPAN_STATUS + b"\x00"
_STATUS_MESSAGE, _STATUS_CODE_ERROR = b"\x12", b"\x18\x02"
_KEY_VALUE_KEY, _KEY_VALUE_VALUE = b"\x0a", b"\x12"
_ANY_STRING, _ANY_BOOL_TRUE, _ANY_BOOL_FALSE = b"\x0a", b"\x10\x01", b"\x10\x00"
_ANY_INT, _ANY_DOUBLE, _ANY_ARRAY = b"\x18", b"\x21", b"\x2a"
_ARRAY_VALUE = b"\x0a"
# `flags`: the "has is_remote" bit, plus "is_remote" for a child of the client's span (SpanFlags).
_FLAGS_LOCAL_PARENT = (0x100).to_bytes(4, "little")
_FLAGS_REMOTE_PARENT = (0x300).to_bytes(4, "little")


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any, max_length: int | None) -> bytes | None:
    """An `AnyValue`, or None for a value OTel does not allow."""
    kind = type(value)
    if kind is str:
        data = (value if max_length is None else value[:max_length]).encode()
        n = len(data)
        return _ANY_STRING + (_VARINTS[n] if n < 128 else _varint(n)) + data
    if kind is bool:
        return _ANY_BOOL_TRUE if value else _ANY_BOOL_FALSE
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            return None
        return _ANY_INT + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement, 10 bytes if < 0
    if kind is float:
        return _ANY_DOUBLE + _DOUBLE(value)
    if kind is tuple or kind is list:
        items = [_any_value(item, max_length) for item in value]
        if any(item is None for item in items):
            return None
        return _field(_ANY_ARRAY, b"".join(_field(_ARRAY_VALUE, item) for item in items if item is not None))
    return None


class OtlpEncoder:
    """Encodes batches of span records for one resource and instrumentation scope."""

    def __init__(self, resource: Resource, scope: InstrumentationScope, limits: SpanLimits | None = None) -> None:
        limits = SpanLimits() if limits is None else limits
        self._max_attributes = limits.max_span_attributes
        self._max_length = limits.max_span_attribute_length
        self._keys: dict[str, bytes] = {}
        # The span limits are not the resource's or the scope's: their attributes go as they are.
        resource_message = self._attributes(_RESOURCE_ATTRIBUTES, resource.attributes.items(), None)
        self._resource = _field(_RESOURCE_SPANS_RESOURCE, resource_message)
        self._resource_schema = _field(_RESOURCE_SPANS_SCHEMA_URL, resource.schema_url.encode()) \
            if resource.schema_url else b""
        scope_message = _field(_SCOPE_NAME, scope.name.encode())
        if scope.version:
            scope_message += _field(_SCOPE_VERSION, scope.version.encode())
        scope_message += self._attributes(_SCOPE_ATTRIBUTES, (scope.attributes or {}).items(), None)
        self._scope = _field(_SCOPE_SPANS_SCOPE, scope_message)
        self._scope_schema = _field(_SCOPE_SPANS_SCHEMA_URL, scope.schema_url.encode()) if scope.schema_url else b""

    def encode(self, spans: Sequence[SpanRecord]) -> bytes:
        """One `ExportTraceServiceRequest` holding `spans`."""
        scope_spans = b"".join([self._scope, *[self._span(span) for span in spans], self._scope_schema])
        resource_spans = self._resource + _field(_RESOURCE_SPANS_SCOPE_SPANS, scope_spans) + self._resource_schema
        return _field(_REQUEST_RESOURCE_SPANS, resource_spans)

    def _span(self, span: SpanRecord) -> bytes:
        name = span.name.encode()
        parts = [_SPAN_TRACE_ID, span.trace_id.to_bytes(16, "big"), _SPAN_SPAN_ID, span.span_id.to_bytes(8, "big")]
        if span.parent_id:
            parts += (_SPAN_PARENT_SPAN_ID, span.parent_id.to_bytes(8, "big"))
        parts += (_SPAN_NAME, _varint(len(name)), name, _SPAN_KIND, _varint(span.kind.value + 1),
                  _SPAN_START, _FIXED64(span.start_ns), _SPAN_END, _FIXED64(span.end_ns))
        attributes = span.attributes
        dropped = len(attributes) - self._max_attributes
        items: Iterable[tuple[str, Any]] = attributes.items()
        if dropped > 0:  # the SDK keeps the ones set last
            items = list(items)[dropped:]
            parts += (_SPAN_DROPPED_ATTRIBUTES, _varint(dropped))
        parts.append(self._attributes(_SPAN_ATTRIBUTE, items, self._max_length))
        if span.error is None:
            parts.append(_STATUS_UNSET)
        else:
            parts.append(_field(_SPAN_STATUS, _field(_STATUS_MESSAGE, span.error.encode()) + _STATUS_CODE_ERROR))
        parts += (_SPAN_FLAGS, _FLAGS_REMOTE_PARENT if span.remote_parent else _FLAGS_LOCAL_PARENT)
        return _field(_SCOPE_SPANS_SPANS, b"".join(parts))

    def _attributes(self, tag: bytes, items: Iterable[tuple[str, Any]], max_length: int | None) -> bytes:
        """Repeated `KeyValue` fields under `tag`."""
        out: list[bytes] = []
        keys = self._keys
        for key, value in items:
            encoded_key = keys.get(key)
            if encoded_key is None:
                encoded_key = _field(_KEY_VALUE_KEY, key.encode())
                if len(keys) < _MAX_CACHED_KEYS:
                    keys[key] = encoded_key
            any_value = _any_value(value, max_length)
            if any_value is None:
                log.warning("attribute %s has a value OTLP cannot carry (%s); left out", key, type(value).__name__)
                continue
            # Lengths are under 128 but for long content: one byte, no call (this loop is the hot part).
            n = len(any_value)
            key_value = encoded_key + _KEY_VALUE_VALUE + (_VARINTS[n] if n < 128 else _varint(n)) + any_value
            n = len(key_value)
            out += (tag, _VARINTS[n] if n < 128 else _varint(n), key_value)
        return b"".join(out)

