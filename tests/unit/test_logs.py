"""printd.logs: library records and printd's own lines share one pipeline, secrets masked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from printd.logs import setup_logging


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """setup_logging owns the root logger and structlog's config: give them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_library_records_are_json_like_printds_own_and_masked(
    fresh_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stdlib record (as psycopg_pool, h11 or trio write them) is rendered and masked like
    printd's own lines: JSON with level, timestamp and logger; passwords and tokens hidden."""
    setup_logging("info", "json")
    pool = logging.getLogger("psycopg.pool")
    pool.warning(
        "error connecting in %r: postgresql://printd:hunter2@db:5432/x; password=hunter2 x", "pool-1"
    )
    logging.getLogger("somelib").info("an info line from a library is kept at info")
    logging.getLogger("somelib").debug("debug is filtered at info")
    structlog.get_logger("printd").info("own line", dsn="postgresql://u:hunter2@db/x", note="Bearer abc.def")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("trio").exception("task crashed")
    raw = _lines(capsys)
    records = [json.loads(line) for line in raw]
    assert [r["event"].split(" ")[0] for r in records] == ["error", "an", "own", "task"]
    first = records[0]
    assert first["level"] == "warning" and first["logger"] == "psycopg.pool" and "timestamp" in first
    assert "'pool-1'" in first["event"] and "password=*** x" in first["event"]
    assert records[2]["note"] == "Bearer ***"
    assert not any("hunter2" in line or "abc.def" in line for line in raw)
    assert "Traceback" in records[-1]["exception"] and records[-1]["level"] == "error"


def test_console_format_renders_library_records_too(
    fresh_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging("warning", "console")
    logging.getLogger("psycopg.pool").warning("discarding closed connection; password='x y'")
    logging.getLogger("somelib").info("not at warning")
    [line] = _lines(capsys)
    assert "[warning" in line and "discarding closed connection" in line and "x y" not in line
