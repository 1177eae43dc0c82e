"""One logging setup for the CLI, the workers and the trainers.

mucode's own loggers (``mucode.*`` and the ``app``, ``workers``, ``trainers`` modules) log at
``MUCODE_LOG_LEVEL`` (default INFO; ``mucode -v`` is DEBUG); other libraries' loggers at WARNING. A terminal gets
rich's handler; anything else (a container, a file, CI) plain lines with a timestamp, one record per line.
``MUCODE_LOG_FORMAT=rich|plain`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys

OURS = ("mucode", "app", "workers", "trainers")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "mucode"


def _level(value: str | int | None) -> int:
    if value is None or value == "":
        value = os.environ.get("MUCODE_LOG_LEVEL") or "INFO"
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).strip().upper())
    if not isinstance(level, int):
        from app.errors import ConfigError

        raise ConfigError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING or ERROR (MUCODE_LOG_LEVEL)")
    return level


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_logging(level: str | int | None = None, *, stream=None) -> int:
    """Install the handler once (calling again only changes the level); returns the level of our loggers.
    ``stream``: where to write (default: the current stderr, looked up at each record)."""
    lvl = _level(level)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        out = stream or sys.stderr
        fmt = os.environ.get("MUCODE_LOG_FORMAT", "").strip().lower()
        rich = fmt == "rich" or (fmt != "plain" and hasattr(out, "isatty") and out.isatty())
        if rich:
            from rich.console import Console
            from rich.logging import RichHandler

            console = Console(file=stream) if stream is not None else Console(stderr=True)
            handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        else:
            handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
            handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
    for name in OURS:
        logging.getLogger(name).setLevel(lvl)
    return lvl
