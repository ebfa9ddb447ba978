"""Message bodies that compress like real ones: a load test that sent repeated strings would
flatter permessage-deflate, one that sent random bytes would slander it."""

from __future__ import annotations

import random

import orjson


def status_fields(index: int, size: int) -> bytes:
    """Deterministic JSON fields (starting with a comma) that pad a status message to about `size`
    bytes: a printer's details and its job queue (consecutive job and order numbers, random sizes
    and ages), so that it compresses like a real status rather than like noise or like a repeated
    string."""
    rnd = random.Random(index)
    head = {
        "model": rnd.choice(["TM-T88VI", "TM-m30III", "TSP143IV", "SRP-350V", "CT-S851II"]),
        "firmware": f"{rnd.randint(1, 9)}.{rnd.randint(0, 40)}.{rnd.randint(0, 999)}",
        "paper": rnd.choice(["ok", "near_end", "out"]),
        "cover_open": rnd.random() < 0.05,
        "temp_c": round(rnd.uniform(28, 71), 1),
        "jobs_done": rnd.randint(0, 10**6),
        "uptime_s": rnd.randint(0, 10**7),
    }
    body = orjson.dumps(head)[1:-1]
    budget = size - 110 - len(body)  # envelope, printer_id, status, ts, "queue":[...]
    jobs: list[bytes] = []
    used = 0
    job_id, order, age = rnd.randint(10**8, 10**9), rnd.randint(0, 900000), 0
    while True:
        job_id += rnd.randint(1, 40)
        order += rnd.randint(0, 3)
        age += rnd.randint(0, 4000)
        job = orjson.dumps(
            {
                "job_id": job_id,
                "order": f"o-{order:06d}",
                "station": rnd.choice(["kitchen", "bar", "counter", "grill", "pass"]),
                "copies": rnd.randint(1, 2),
                "state": "printing" if not jobs else "queued",
                "bytes": rnd.randint(300, 9000),
                "age_ms": age,
            }
        )
        if jobs and used + len(job) + 1 > budget:
            break
        jobs.append(job)
        used += len(job) + 1
    return b"," + body + b',"queue":[' + b",".join(jobs) + b"]"
