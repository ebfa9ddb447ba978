"""`make coverage`'s summary: branch coverage per package from the combined data file.

A package's figure counts the modules directly in it (`printd/` is printd's top-level modules;
`printd/jobs/` its own row), as coverage.py counts them: covered lines and branches over all.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import coverage

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "printd/",
    "printd/breakers/",
    "printd/cluster/",
    "printd/gateway/",
    "printd/http/",
    "printd/jobs/",
    "printd/store/",
    "printctl/",
    "printctl/loadgen/",
)
FIELDS = ("num_statements", "covered_lines", "num_branches", "covered_branches")


def summarize(files: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for name, summary in files.items():
        package = Path(name).resolve().relative_to(ROOT).parent.as_posix() + "/"
        for row in (package, "total"):
            for f in FIELDS:
                rows[row][f] += summary[f]
    return rows


def percent(covered: int, total: int) -> str:
    return f"{100.0 * covered / total:5.1f}%" if total else "    -"


def main() -> int:
    cov = coverage.Coverage(config_file=str(ROOT / "pyproject.toml"))
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        report = json.loads(out.read_text())
    rows = summarize({name: data["summary"] for name, data in report["files"].items()})
    print(f"{'package':20} {'stmts':>6} {'lines':>7} {'branches':>8} {'br cov':>7} {'total':>7}")
    for name in (*PACKAGES, "total"):
        r = rows.get(name)
        if r is None:
            continue
        stmts, lines, branches, br = (r[f] for f in FIELDS)
        print(
            f"{name:20} {stmts:6} {percent(lines, stmts):>7} {branches:8} {percent(br, branches):>7}"
            f" {percent(lines + br, stmts + branches):>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
