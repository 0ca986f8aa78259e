"""The parser-error filter: aiohttp's record of a refused request keeps its reason, not its bytes."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong

from proxy.redact import ParserErrorFilter, install, summary

KEY = "sk-test-" + "s3cr3t" * 6


def record(exc: Exception | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
                             ("127.0.0.1",), exc_info)


@pytest.mark.parametrize(("exc", "reason"), [
    (BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: Bearer {KEY}\\x01'\n   ^"),
     "Invalid header value char"),
    (LineTooLong(f"Bearer {KEY}".encode(), 65536), "Got more than 65536 bytes when reading"),
    (InvalidHeader(f"api-key: {KEY}".encode()), "Invalid HTTP header"),
])
def test_a_parser_error_loses_its_quoted_bytes_and_keeps_its_reason(exc: Exception, reason: str) -> None:
    rec = record(exc)
    assert ParserErrorFilter().filter(rec)
    text = logging.Formatter().format(rec)
    assert KEY not in text
    assert text == f"Error handling request from 127.0.0.1: {type(exc).__name__} 400 ({reason})"
    assert summary(exc) == reason  # type: ignore[arg-type]


def test_other_records_pass_unchanged() -> None:
    plain, other = record(None), record(ValueError("boom"))
    for rec in (plain, other):
        before = (rec.msg, rec.args, rec.exc_info)
        assert ParserErrorFilter().filter(rec)
        assert (rec.msg, rec.args, rec.exc_info) == before


def test_install_adds_the_filter_once() -> None:
    logger = logging.getLogger("aiohttp.server")
    install()
    install()
    assert sum(isinstance(f, ParserErrorFilter) for f in logger.filters) == 1
