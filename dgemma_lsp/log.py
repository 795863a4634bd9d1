"""Logging: stderr (or a file) always, and window/logMessage once a client is connected.

stdout carries the protocol, so nothing here ever writes to it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from lsprotocol import types

if TYPE_CHECKING:
    from pygls.lsp.server import LanguageServer

_LEVELS = {
    logging.ERROR: types.MessageType.Error,
    logging.WARNING: types.MessageType.Warning,
    logging.INFO: types.MessageType.Info,
    logging.DEBUG: types.MessageType.Log,
}


class LspLogHandler(logging.Handler):
    """Forwards our records to the client as window/logMessage."""

    def __init__(self, server: LanguageServer, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.server = server

    def emit(self, record: logging.LogRecord) -> None:
        # pygls logs every message it sends; forwarding those would loop forever.
        if record.name.startswith("pygls"):
            return
        try:
            message = self.format(record)
            kind = _LEVELS.get(record.levelno, types.MessageType.Log)
            self.server.window_log_message(types.LogMessageParams(type=kind, message=message))
        except Exception:  # a closed transport must not take the server down
            self.handleError(record)


def setup_logging(verbosity: int = 0, log_file: str | None = None) -> None:
    """-v: INFO, -vv: DEBUG for our loggers; pygls stays at WARNING unless -vvv."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pygls").setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
    # INFO and above always reach the client's log (window/logMessage), whatever stderr shows.
    logging.getLogger("dgemma_lsp").setLevel(min(level, logging.INFO))


def attach_client_logging(server: LanguageServer) -> None:
    handler = LspLogHandler(server)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("dgemma_lsp").addHandler(handler)


def detach_client_logging() -> None:
    """Stop forwarding to the client (its connection is closing); stderr or the file still log."""
    ours = logging.getLogger("dgemma_lsp")
    for handler in [h for h in ours.handlers if isinstance(h, LspLogHandler)]:
        ours.removeHandler(handler)
