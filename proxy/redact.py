"""Keep request bytes out of aiohttp's error log: a malformed header may carry the API key.

When aiohttp's HTTP parser refuses a request (a control character in a header, a space before the
colon, a line over `max_field_size`), it logs the error with a traceback whose message quotes the
offending line, e.g. ``b'Authorization: Bearer sk-...\\x01'``. That line is whatever the client
sent, so it may hold the raw key, which must never reach a log (contract §5). The filter below
rewrites those records: the parser's reason, the exception's name and status stay, the quoted
bytes and the traceback (which is only the parser's) go.
"""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"
# Where aiohttp's message starts quoting the request: "...:\n\n  b'...'" or "...: b'...'".
_QUOTE = re.compile(r":?\s*b['\"].*", re.DOTALL)


def summary(exc: HttpProcessingError) -> str:
    """The parser's reason without the bytes it quotes."""
    first = (exc.message or "").split("\n", 1)[0]
    return _QUOTE.sub("", first).rstrip(": ") or type(exc).__name__


class ParserErrorFilter(logging.Filter):
    """Rewrites aiohttp's log record of a refused request so that it quotes none of its bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            args = (record.getMessage(), type(exc).__name__, exc.code, summary(exc))
            record.msg, record.args = "%s: %s %d (%s)", args
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to aiohttp's server logger, once (make_app calls it for every app)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, ParserErrorFilter) for f in logger.filters):
        logger.addFilter(ParserErrorFilter())
