"""The exactly-once checker: compare the jobs printd accepted with what the printers printed.

`compare` is pure: give it accepted job ids and printed job ids, get lost / duplicated /
unexpected. The fault drills and the integration tests all end with this question. The readers
turn the files into ids: the operator's list of accepted jobs, and the agents' print logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

PRINT_LOG = "prints.jsonl"


class BadInput(Exception):
    """A path or file the checker cannot use (a usage error, not a failed check)."""


@dataclass(frozen=True, slots=True)
class PrintReport:
    accepted: int
    printed: int
    lost: tuple[str, ...]
    duplicated: dict[str, int]
    unexpected: tuple[str, ...]
    torn: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "accepted": self.accepted,
            "printed": self.printed,
            "lost": list(self.lost),
            "duplicated": self.duplicated,
            "unexpected": list(self.unexpected),
            "torn": self.torn,
        }


def compare(accepted: Iterable[str], printed: Iterable[str], *, torn: int = 0) -> PrintReport:
    acc = set(accepted)
    counts = Counter(printed)
    return PrintReport(
        accepted=len(acc),
        printed=sum(counts.values()),
        lost=tuple(sorted(acc - counts.keys())),
        duplicated={job: n for job, n in sorted(counts.items()) if n > 1},
        unexpected=tuple(sorted(counts.keys() - acc)),
        torn=torn,
    )


def _job_id(line: bytes) -> str | None:
    """The id of one line: a JSON object's "job_id", or a bare id; None if unreadable."""
    if not line.startswith(b"{"):
        return line.decode(errors="replace")
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    job_id = record.get("job_id") if isinstance(record, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def read_job_ids(path: Path) -> list[str]:
    """Job ids from the operator's file of accepted jobs: JSON lines with a "job_id" field, or one
    bare id per line. An unreadable line is a BadInput (naming it): the list must be exact."""
    ids = []
    for number, raw in enumerate(_read(path).splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        job_id = _job_id(line)
        if job_id is None:
            raise BadInput(f"{path} line {number}: not a job id or a JSON object with a 'job_id'")
        ids.append(job_id)
    return ids


@dataclass(frozen=True, slots=True)
class PrintLog:
    job_ids: list[str]  # one per physical print, in log order
    torn: int = 0  # lines that are not a whole record: a write cut short by a crash


def parse_print_log(data: bytes) -> PrintLog:
    """One agent's prints.jsonl. A line torn by a crash is skipped and counted: the agent expects
    one as the last line after a crash, and ends it before appending, so one may also sit in the
    middle. Its job's journal says `printing` without `done`, so the agent reports that job's
    outcome as unknown rather than printing it again."""
    ids: list[str] = []
    torn = 0
    for raw in data.splitlines():
        line = raw.strip()
        if not line:
            continue
        job_id = _job_id(line) if line.startswith(b"{") else None
        if job_id is None:
            torn += 1
        else:
            ids.append(job_id)
    return PrintLog(ids, torn)


def read_print_log(paths: Iterable[Path]) -> PrintLog:
    """Every physical print in the agents' print logs (a directory means its prints.jsonl)."""
    ids: list[str] = []
    torn = 0
    for p in paths:
        log = p / PRINT_LOG if p.is_dir() else p
        if p.is_dir() and not log.is_file():
            raise BadInput(f"{p} has no {PRINT_LOG}: is it an agent's --output directory?")
        one = parse_print_log(_read(log))
        ids.extend(one.job_ids)
        torn += one.torn
    return PrintLog(ids, torn)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise BadInput(f"{path}: {exc.strerror or exc}") from None
