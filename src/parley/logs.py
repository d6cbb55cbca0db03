"""Logging: one logger per subsystem (parley.c2s, parley.router, parley.<module>)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("parley")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def set_level(subsystem: str, level: str) -> None:
    """Change one subsystem's level while the server runs."""
    logging.getLogger(f"parley.{subsystem}" if subsystem else "parley").setLevel(level)
