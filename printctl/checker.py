"""The exactly-once checker: compare the jobs printd accepted with what the printers printed.

Pure: give it accepted job ids and the print log lines, get lost / duplicated / unexpected.
The fault drills and the integration tests all end with this question.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

PRINT_LOG = "prints.jsonl"


@dataclass(frozen=True, slots=True)
class PrintReport:
    accepted: int
    printed: int
    lost: tuple[str, ...]
    duplicated: dict[str, int]
    unexpected: tuple[str, ...]

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
        }


def compare(accepted: Iterable[str], printed: Iterable[str]) -> PrintReport:
    acc = set(accepted)
    counts = Counter(printed)
    return PrintReport(
        accepted=len(acc),
        printed=sum(counts.values()),
        lost=tuple(sorted(acc - counts.keys())),
        duplicated={job: n for job, n in sorted(counts.items()) if n > 1},
        unexpected=tuple(sorted(counts.keys() - acc)),
    )


def read_job_ids(path: Path) -> list[str]:
    """Job ids from a file of JSON lines with a "job_id" field, or one bare id per line."""
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        ids.append(str(orjson.loads(line)["job_id"]) if line.startswith("{") else line)
    return ids


def read_prints(paths: Iterable[Path]) -> list[str]:
    """Job ids of every physical print in the agents' print logs (a directory means its prints.jsonl)."""
    out: list[str] = []
    for p in paths:
        log = p / PRINT_LOG if p.is_dir() else p
        if log.exists():
            out.extend(read_job_ids(log))
    return out
