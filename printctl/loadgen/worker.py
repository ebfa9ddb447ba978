"""A load-test worker process: `python -m printctl.loadgen.worker`, started by the coordinator.

Its first stdin line is the JSON of {plan, worker, url, secret, run_id, out_dir} (on stdin, not
in argv: the secret must not show in `ps`); then it runs `fleet.Fleet`. SIGINT is ignored: a
Ctrl-C reaches the whole process group, and the coordinator decides how its workers stop.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import orjson

from printctl.loadgen.fleet import Fleet, read_plan_line
from printctl.loadgen.plan import LoadPlan


def serve(fleet_class: type[Fleet] = Fleet) -> None:
    """A worker process's life: its share of the plan on stdin (then the conductor's control
    lines), its fleet run until the conductor says stop. SIGINT is the conductor's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = sys.stdin.fileno()
    line, rest = read_plan_line(fd)
    spec = orjson.loads(line)
    fleet = fleet_class(
        LoadPlan.from_json(spec["plan"]),
        int(spec["worker"]),
        str(spec["url"]),
        str(spec["secret"]),
        str(spec["run_id"]),
        Path(spec["out_dir"]),
        fd,
    )
    fleet.client.control_lines.extend(x.decode() for x in rest.split(b"\n") if x)
    fleet.run()


def main() -> None:
    serve(Fleet)


if __name__ == "__main__":
    main()
