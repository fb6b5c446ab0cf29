"""Logging set-up for the command line: JSON lines unless on a terminal."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _TlsEofNoise(logging.Filter):
    """asyncio warns at every TLS connection the server closes that nats-py's protocol
    returned True from ``eof_received`` (meaningless under TLS): not a problem to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def configure_logging(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Log to stderr, as JSON lines when stderr is not a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("nats").setLevel(logging.WARNING)
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _TlsEofNoise) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_TlsEofNoise())
    logging.getLogger("pyrad").setLevel(logging.WARNING)
