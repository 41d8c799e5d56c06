"""What the ASGI server logs about clients, said at the level it deserves.

uvicorn answers a text frame that is not UTF-8 correctly (close code 1007, RFC 6455 §8.1) but
logs it with a traceback, as if the server had failed. A client's bad bytes are the client's
fault: this filter keeps one warning line and drops the traceback.
"""

from __future__ import annotations

import logging

_BAD_UTF8 = "Invalid UTF-8 sequence received from client."


class ClientFaultFilter(logging.Filter):
    """Turns uvicorn's traceback for a non-UTF-8 text frame into a one-line warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == _BAD_UTF8:
            record.msg, record.args = "closed a connection with 1007: a text frame was not valid UTF-8", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install() -> None:
    """Add the filter to uvicorn's error logger once (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in logger.filters):
        logger.addFilter(ClientFaultFilter())
