"""The "bge_engine" logger: the library's records go there, the command line prints them.

The library adds a `NullHandler` (the logging HOWTO's rule for libraries), so that an
application which configured no logging does not get logging's bare last-resort output; the
command line adds a stderr handler that prefixes each line with `bge-engine:`. `logging` is
imported on first use, not with bge_engine (it would count against the cold start).
"""

from __future__ import annotations

import threading

NAME = "bge_engine"
_setup_lock = threading.Lock()
_setup_done = False
_stderr_handler = None  # to_stderr's handler, once it has run


def logger():
    """The "bge_engine" logger, with the library's NullHandler on it."""
    global _setup_done
    import logging

    log = logging.getLogger(NAME)
    if not _setup_done:
        with _setup_lock:
            if not _setup_done:
                log.addHandler(logging.NullHandler())
                _setup_done = True
    return log


def to_stderr(level: int = 30) -> None:
    """Prints the library's records of `level` (default WARNING) and above on stderr as
    `bge-engine: warning: ...` (the command line's setting; a second call changes only the
    level, so that main() run twice in one process prints each record once)."""
    global _stderr_handler
    import logging
    import sys

    log = logger()
    log.setLevel(level)
    if _stderr_handler is not None:
        return

    class Prefixed(logging.Formatter):
        def format(self, record):
            return f"bge-engine: {record.levelname.lower()}: {record.getMessage()}"

    class Stderr(logging.StreamHandler):
        """Writes to sys.stderr as it is at each record (an app may replace it later)."""

        stream = property(lambda self: sys.stderr, lambda self, value: None)

    _stderr_handler = Stderr()
    _stderr_handler.setFormatter(Prefixed())
    log.addHandler(_stderr_handler)
