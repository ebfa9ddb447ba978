"""Structured logs (structlog): console for people, JSON for collectors, secrets masked.

One pipeline for every line: printd's own structlog loggers, and the records libraries write
through the standard `logging` module (psycopg_pool's reconnect attempts during a database
outage, websockets, trio). Both share the processors below and the renderer, so a JSON log stays
JSON whatever wrote the line, and masking applies to library messages too.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any

import structlog
from jwt.warnings import InsecureKeyLengthWarning

_SECRET_KEYS = re.compile(r"(secret|password|token|authorization|dsn)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
#: libpq conninfo (`password=...`) and HTTP credentials inside free text
_TEXT_SECRETS = re.compile(r"(\b(?:password|passwd)\s*=\s*)('[^']*'|\S+)|(\bBearer\s+)[\w.~+/=-]+", re.I)


def _mask_text(text: str) -> str:
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    return _TEXT_SECRETS.sub(lambda m: (m.group(1) or m.group(3)) + "***", text)


def _mask(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line: mask secret-named fields, URL passwords, and
    `password=` / `Bearer` values in any text (library messages included)."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and key != "event":
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = _mask_text(value)
    return event


class _LevelGate:
    """The log level as a processor, so that a reload (SIGHUP) can change it while loggers that
    were already used keep working (structlog caches them)."""

    def __init__(self) -> None:
        self.level = logging.INFO

    def __call__(self, _: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if _LEVELS.get(method, logging.INFO) < self.level:
            raise structlog.DropEvent
        return event


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING}
_LEVELS.update({"error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL})
_gate = _LevelGate()


def set_log_level(level: str) -> None:
    """Change the level of every line, printd's and the libraries', from now on."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    _gate.level = lvl
    logging.getLogger().setLevel(lvl)


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    _gate.level = lvl
    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)  # config.validate guards production
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    finish = [_mask, structlog.processors.format_exc_info, renderer]

    # Library records: the stdlib root logger renders them with the same processors.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    logging.basicConfig(handlers=[handler], level=lvl, force=True)
    logging.getLogger("websockets").setLevel(logging.WARNING)  # "connection open" per client

    # printd's own lines: structlog straight to stderr (no stdlib detour on printd's own path).
    structlog.configure(
        processors=[
            _gate,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            *finish,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),  # the gate filters
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
