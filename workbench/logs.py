"""The workbench's warnings and notes go through the standard `logging` module, under the "workbench" logger.

Library code calls `logger(__name__).warning(...)`; the CLI (and every job it starts) shows them on standard error
as ``warning: ...`` through `configure_cli`. Elsewhere the host decides: a notebook or the app shows WARNING and
above through Python's last-resort handler, and `logging.getLogger("workbench").setLevel(...)` or a handler of
your own changes that.
"""

from __future__ import annotations

import logging
import sys

ROOT = "workbench"


def logger(name: str | None = None) -> logging.Logger:
    """The logger of a module of the package (`__name__`), or the package's own."""
    return logging.getLogger(name if name and name.startswith(ROOT) else ROOT)


class _Lowercase(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def configure_cli(level: int = logging.INFO) -> None:
    """Show the workbench's log records on standard error as "warning: ..." (once, however often it is called)."""
    log = logging.getLogger(ROOT)
    if any(getattr(h, "_kdw_cli", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lowercase())
    handler._kdw_cli = True
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
