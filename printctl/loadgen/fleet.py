"""One worker's share of a load test, on the wire: agents, dashboards and the back office of
`plan.share(worker)`, in one epoll loop.

The worker's life, driven by the coordinator's lines on stdin:
- after start: tokens minted, messages prepared, `{"phase": "prepared"}`;
- `go T0`: connections open at their ramp times (at most MAX_HANDSHAKES at once); each agent
  announces its printers with ids and counts as registered when printd acked them all (the ack
  comes after the registration is stored); `{"phase": "ready"}` once all are, or when the ramp
  plus READY_GRACE is over;
- `jobs T1 T2`: the steady window. Statuses flow until T2, jobs are submitted from T1 to T2
  (then only retried), counters are read at T1 and T2;
- `stop` (or stdin closed): `{"phase": "result"}` with everything measured, then exit.
A `{"phase": "progress"}` line goes out every second for the live view and the drain decision.

Every connection that closes is counted as an error of its kind and reopened with the reference
agent's reconnect policy (printctl.keepalive.Reconnect), except after a 401/403 (the token is
wrong: retrying cannot help). Times are epoch seconds (time.time()) wherever two processes compare
them: the status `ts`, the job's due time carried in its payload.
"""

from __future__ import annotations

import heapq
import os
import time
from pathlib import Path
from typing import IO, Any

import orjson

from printctl.agent import Action
from printctl.keepalive import Reconnect
from printctl.loadgen import stats
from printctl.loadgen.client import OPEN, Client, Conn, Counters
from printctl.loadgen.http import HttpAnswer, HttpPool
from printctl.loadgen.payloads import status_fields
from printctl.loadgen.plan import (
    LoadPlan,
    agent_company,
    agent_id,
    branch_id,
    company_id,
    dashboard_company,
    dashboard_id,
    job_due,
    job_printer,
    open_at,
    printer_id,
    service_id,
    share,
    status_phase,
    watched,
)
from printctl.loadgen.sim import SimAgent, Verdict, status_templates, submit_verdict
from printctl.loadgen.target import parse_target
from printctl.loadgen.workers import emit
from printd.auth import mint_token

MAX_HANDSHAKES = 256  # handshakes in flight per worker
CONNECT_TIMEOUT = 10.0  # upgrade sent -> hello
READY_GRACE = 15.0  # after the ramp, how long registration may take before jobs start anyway
HTTP_CONNECTIONS = 64  # keep-alive connections per worker for the back office
HTTP_TIMEOUT = 10.0  # a POS's patience with one request
POLL_FIRST, POLL_MAX = 0.005, 0.2  # jobs of a company without a dashboard: GET /api/v1/jobs/{id},
# first this soon after the 202, then at doubling intervals: timed to within a factor of two
PROGRESS_EVERY = 1.0
TOKEN_SLACK = 3600  # tokens outlive the run by this much
AUTH_REFUSALS = ("http 401", "http 403")


class Peer:
    """One simulated connection (agent or dashboard) across its reconnects."""

    __slots__ = ("kind", "index", "company", "request", "conn", "policy", "agent", "refused")

    def __init__(self, kind: str, index: int, company: int, request: bytes, agent: SimAgent | None) -> None:
        self.kind = kind
        self.index = index
        self.company = company
        self.request = request
        self.conn: Conn | None = None
        self.policy = Reconnect()
        self.agent = agent
        self.refused = False


class Submission:
    """One ticket a POS wants printed: the same request (same Idempotency-Key) until it has an answer."""

    __slots__ = ("n", "company", "printer", "body", "due", "job_id", "attempts", "poll_step")

    def __init__(self, n: int, company: int, printer: str, body: bytes, due: float) -> None:
        self.n = n
        self.company = company
        self.printer = printer
        self.body = body
        self.due = due
        self.job_id = ""
        self.attempts = 0
        self.poll_step = POLL_FIRST


class Fleet:
    def __init__(
        self, plan: LoadPlan, worker: int, url: str, secret: str, run_id: str, out_dir: Path, control: int
    ) -> None:
        self.plan = plan
        self.worker = worker
        self.run_id = run_id
        self.share = share(plan, worker)
        stats.raise_nofile(self.share.connections + HTTP_CONNECTIONS)
        self.client = Client(parse_target(url), deflate=plan.compression, auth="header", control=control)
        self.client.on_open = self._opened
        self.client.on_close = self._closed
        self.client.on_message = self._message
        self.counts = {"agent": Counters(), "dashboard": Counters(), "http": Counters()}
        self.http = HttpPool(
            self.client, size=HTTP_CONNECTIONS, timeout=HTTP_TIMEOUT, count=self.counts["http"]
        )
        self.hist = {
            name: stats.new_histogram() for name in ("connect", "job_round_trip", "job_accept", "status")
        }
        self.errors: dict[str, int] = {}
        self.c: dict[str, int] = dict.fromkeys(
            (
                "handshakes",
                "reconnects",
                "statuses",
                "status_items",
                "status_batches",
                "batch_bytes",
                "submitted",
                "accepted",
                "rejected",
                "gave_up",
                "completed",
                "polled",
                "printed",
                "replayed",
                "earlier_runs",
            ),
            0,
        )
        self.sent_by_company: dict[int, int] = {}
        self.by_instance: dict[str, int] = {}
        self.handshaking = 0
        self.t0 = self.t1 = self.t2 = 0.0
        self.marks: dict[str, dict[str, Any]] = {}
        self.stopping = False
        self.ready_sent = False
        self._seq = 0  # tie-breaker in the heaps
        self.reconnects: list[tuple[float, int, Peer]] = []
        self.retries: list[tuple[float, int, Submission]] = []
        self.polls: list[tuple[float, int, Submission]] = []
        self.pending: dict[int, Submission] = {}  # submitted, no final answer yet
        self.next_job = worker
        self.files = {
            name: out_dir / f"{name}-w{worker}.jsonl" for name in ("accepted", "prints", "earlier-runs")
        }
        self.out: dict[str, IO[bytes]] = {name: open(path, "ab") for name, path in self.files.items()}
        self._prepare(secret)

    # ------------------------------------------------------------ preparation

    def _prepare(self, secret: str) -> None:
        plan = self.plan
        ttl = int(plan.ramp + plan.duration + plan.drain + TOKEN_SLACK)
        self.peers: list[Peer] = []
        for d in self.share.dashboards:
            c = dashboard_company(plan, d)
            token = mint_token(secret, role="dashboard", company=company_id(c), sub=dashboard_id(d), ttl=ttl)
            self.peers.append(Peer("dashboard", d, c, self.client.request_for(token), None))
        self.schedule: list[tuple[float, Peer, bytes, bytes]] = []  # (phase, agent, head, tail)
        self.templates: dict[tuple[int, int], tuple[bytes, bytes, bytes]] = {}
        for a in self.share.agents:
            c = agent_company(plan, a)
            printers = tuple(printer_id(a, k) for k in range(plan.printers_per_agent))
            sim = SimAgent(a, c, agent_id(a), printers, self.run_id)
            token = mint_token(
                secret,
                role="agent",
                company=company_id(c),
                sub=agent_id(a),
                branch=branch_id(a),
                ttl=ttl,
            )
            peer = Peer("agent", a, c, self.client.request_for(token), sim)
            self.peers.append(peer)
            for k, p in enumerate(printers):
                head, reg_head, tail = status_templates(p, status_fields(a * 1000 + k, plan.status_bytes))
                self.templates[(a, k)] = (head, reg_head, tail)
                self.schedule.append((status_phase(plan, self.run_id, a, k), peer, head, tail))
        self.schedule.sort(key=lambda s: s[0])
        self.status_cycle = 0
        self.status_next = 0
        self.opens = sorted(self.peers, key=lambda p: open_at(plan, 0.0, p.kind, p.index))
        self.open_next = 0
        self.pos_headers: dict[int, str] = {}
        for c in range(plan.companies):
            token = mint_token(secret, role="service", company=company_id(c), sub=service_id(c), ttl=ttl)
            self.pos_headers[c] = f"Authorization: Bearer {token}\r\n"

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        emit({"phase": "prepared", "worker": self.worker})
        line = self.client.next_line(time.time() + 600)
        if line is None or not line.startswith("go "):
            return
        self.t0 = float(line.split()[1])
        self.cpu0 = stats.cpu_seconds()
        next_progress = time.time() + PROGRESS_EVERY
        next_sweep = time.monotonic() + 0.5
        while not self.stopping:
            now = time.time()
            self._control()
            if self.stopping:
                break
            self._marks(now)
            due = [now + 0.05]
            due.append(self._open_due(now))
            due.append(self._reconnect_due(now))
            due.append(self._status_due(now))
            due.append(self._jobs_due(now))
            due.append(self._heap_due(self.retries, now, self._submit))
            due.append(self._heap_due(self.polls, now, self._poll))
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY
                self._progress(now)
            mono = time.monotonic()
            if mono >= next_sweep:
                next_sweep = mono + 0.5
                self._sweep(mono)
            self.client.poll(min(due) - time.time())
        self._finish()

    def _control(self) -> None:
        if self.client.control_eof:
            self.stopping = True
        while self.client.control_lines:
            words = self.client.control_lines.popleft().split()
            if words[:1] == ["jobs"] and len(words) == 3:
                self.t1, self.t2 = float(words[1]), float(words[2])
            elif words[:1] == ["stop"]:
                self.stopping = True

    def _marks(self, now: float) -> None:
        """Counters and CPU at the start and end of the steady window."""
        if self.t1 and "t1" not in self.marks and now >= self.t1:
            self.marks["t1"] = self._snapshot(now)
        if self.t2 and "t2" not in self.marks and now >= self.t2:
            self.marks["t2"] = self._snapshot(now)

    def _snapshot(self, now: float) -> dict[str, Any]:
        return {
            "t": now,
            "cpu": stats.cpu_seconds(),
            "counts": {k: v.snapshot() for k, v in self.counts.items()},
            "c": dict(self.c),
            "sent_by_company": dict(self.sent_by_company),
            "open_by_instance": self._open_by_instance(),
        }

    def _in_window(self, now: float) -> bool:
        return bool(self.t1) and self.t1 <= now < self.t2

    # ------------------------------------------------------------ connections

    def _open_due(self, now: float) -> float:
        while self.open_next < len(self.opens):
            peer = self.opens[self.open_next]
            at = open_at(self.plan, self.t0, peer.kind, peer.index)
            if at > now:
                return at
            if self.handshaking >= MAX_HANDSHAKES:
                return now + 0.01
            self.open_next += 1
            self._connect(peer)
        return float("inf")

    def _reconnect_due(self, now: float) -> float:
        while self.reconnects and self.reconnects[0][0] <= now:
            if self.handshaking >= MAX_HANDSHAKES:
                return now + 0.01
            _, _, peer = heapq.heappop(self.reconnects)
            self.c["reconnects"] += 1
            self._connect(peer)
        return self.reconnects[0][0] if self.reconnects else float("inf")

    def _connect(self, peer: Peer) -> None:
        self.c["handshakes"] += 1
        conn = self.client.start(peer.request, peer.kind, peer.index, peer.company, self.counts[peer.kind])
        peer.conn = conn
        if conn.why:  # refused at once (connect() failed synchronously)
            self._closed(conn, counted=False)
        else:
            self.handshaking += 1

    def _opened(self, conn: Conn) -> None:
        self.handshaking -= 1
        stats.record(self.hist["connect"], conn.t_open - conn.t_start)
        self.by_instance[conn.instance] = self.by_instance.get(conn.instance, 0) + 1
        peer = self._peer(conn)
        peer.policy.hello()
        if peer.agent is not None:
            agent = peer.agent
            agent.last_id = 0
            agent.reg_ids.clear()
            for k in range(len(agent.printers)):
                _head, reg_head, tail = self.templates[(agent.index, k)]
                frame_id = agent.next_id()
                agent.reg_ids.add(frame_id)
                self.client.send_message(conn, reg_head % frame_id + b"%.6f" % time.time() + tail)

    def _closed(self, conn: Conn, counted: bool = True) -> None:
        if conn.t_open == 0.0 and counted:
            self.handshaking -= 1
        if self.stopping:
            return
        self._error(f"{conn.kind}: {conn.why}")
        peer = self._peer(conn)
        if peer.conn is not conn:
            return
        peer.conn = None
        if conn.why in AUTH_REFUSALS:
            peer.refused = True  # the token is wrong: a retry cannot help
            return
        delay = peer.policy.closed(conn.code) if conn.t_open else peer.policy.failed()
        self._seq += 1
        heapq.heappush(self.reconnects, (time.time() + delay, self._seq, peer))

    def _peer(self, conn: Conn) -> Peer:
        if conn.kind == "dashboard":
            return self.peers[conn.index - self.share.dashboards.start]
        return self.peers[len(self.share.dashboards) + conn.index - self.share.agents.start]

    def _sweep(self, mono: float) -> None:
        for conn in [c for c in self.client.conns.values() if c.state < OPEN]:
            if mono - conn.t_start > CONNECT_TIMEOUT:
                self.client.fail(conn, "handshake timeout")
        self.http.sweep(mono)

    def _open_by_instance(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for conn in self.client.conns.values():
            if conn.state == OPEN:
                out[conn.instance] = out.get(conn.instance, 0) + 1
        return out

    # ------------------------------------------------------------ messages

    def _message(self, conn: Conn, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._error(f"{conn.kind}: a message that is not JSON")
            return
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        data = msg.get("data")
        if event == "error":
            code = data.get("code") if isinstance(data, dict) else None
            self._error(f"{conn.kind}: printd error {code}")
        elif conn.kind == "agent":
            self._agent_message(conn, event, msg, data)
        else:
            self._dashboard_message(conn, event, data, len(payload))

    def _agent_message(self, conn: Conn, event: Any, msg: dict[str, Any], data: Any) -> None:
        agent = self._peer(conn).agent
        assert agent is not None
        if event == "ack":
            agent.reg_ids.discard(msg.get("id"))
            return
        if event != "job.dispatch":
            return
        now = time.time()
        reply = agent.dispatch(data, now)
        if reply.action is None:
            self._error("agent: malformed job.dispatch")
            return
        for frame in reply.frames:
            self.client.send_message(conn, frame)
        if reply.printed is not None:
            line = orjson.dumps(reply.printed) + b"\n"
            if reply.ours:
                self.c["printed"] += 1
                self.out["prints"].write(line)
            else:
                self.c["earlier_runs"] += 1
                self.out["earlier-runs"].write(line)
        elif reply.action is Action.REPLAY:
            self.c["replayed"] += 1

    def _dashboard_message(self, conn: Conn, event: Any, data: Any, size: int) -> None:
        now = time.time()
        if event == "printer.status.batch" and isinstance(data, dict):
            items = data.get("printers")
            if not isinstance(items, list) or not self._in_window(now):
                return
            self.c["status_batches"] += 1
            self.c["status_items"] += len(items)
            self.c["batch_bytes"] += size
            h = self.hist["status"]
            for item in items:
                ts = item.get("ts") if isinstance(item, dict) else None
                if isinstance(ts, float):
                    stats.record(h, now - ts)
        elif event == "job.completed" and isinstance(data, dict) and conn.index < self.plan.companies:
            # dashboard d = c is the one that times company c's jobs
            result = data.get("result")
            lt = result.get("lt") if isinstance(result, dict) else None
            if not isinstance(lt, dict) or lt.get("run") != self.run_id:
                return
            self.c["completed"] += 1
            stats.record(self.hist["job_round_trip"], now - float(lt.get("t", now)))
            if data.get("state") != "printed":
                self._error(f"job: {data.get('state')}")

    # ------------------------------------------------------------ statuses

    def _status_due(self, now: float) -> float:
        schedule = self.schedule
        if not schedule or self.plan.status_rate <= 0:
            return float("inf")
        interval = self.plan.status_interval
        end = self.t2 or float("inf")
        while True:
            phase, peer, head, tail = schedule[self.status_next]
            due = self.t0 + self.status_cycle * interval + phase
            if due > now or due >= end:
                return due if due < end else float("inf")
            conn = peer.conn
            if conn is not None and conn.state == OPEN:
                ts = time.time()
                self.client.send_message(conn, head + b"%.6f" % ts + tail)
                if self._in_window(ts):
                    self.c["statuses"] += 1
                    self.sent_by_company[peer.company] = self.sent_by_company.get(peer.company, 0) + 1
            self.status_next += 1
            if self.status_next == len(schedule):
                self.status_next = 0
                self.status_cycle += 1

    # ------------------------------------------------------------ jobs

    def _jobs_due(self, now: float) -> float:
        plan = self.plan
        if not self.t1 or plan.job_rate <= 0:
            return float("inf")
        while True:
            due = job_due(plan, self.t1, self.next_job)
            if due >= self.t2:
                return float("inf")
            if due > now:
                return due
            n = self.next_job
            self.next_job += plan.workers
            a, k = job_printer(plan, n)
            c = agent_company(plan, a)
            printer = printer_id(a, k)
            payload = {"text": f"loadtest ticket {n}", "lt": {"run": self.run_id, "n": n, "t": due}}
            sub = Submission(n, c, printer, orjson.dumps({"printer_id": printer, "payload": payload}), due)
            self.pending[n] = sub
            self.c["submitted"] += 1
            self._submit(sub)

    def _submit(self, sub: Submission) -> None:
        sub.attempts += 1
        headers = self.pos_headers[sub.company] + (
            f"Idempotency-Key: lt-{self.run_id}-{sub.n}\r\nContent-Type: application/json\r\n"
        )
        self.http.request("POST", "/api/v1/jobs", headers, sub.body, lambda a, e: self._submitted(sub, a, e))

    def _submitted(self, sub: Submission, answer: HttpAnswer | None, error: str) -> None:
        now = time.time()
        verdict, delay, kind = submit_verdict(answer, error)
        if kind:
            self._error(kind)
        if verdict is Verdict.RETRY and not self.stopping:
            self._seq += 1
            heapq.heappush(self.retries, (now + delay, self._seq, sub))
            return
        if verdict is Verdict.REJECTED or answer is None:
            self.c["rejected"] += 1
            self.pending.pop(sub.n, None)
            return
        try:
            job_id = orjson.loads(answer.body)["job_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._error("submit: 202 without a job_id")
            self.pending.pop(sub.n, None)
            return
        sub.job_id = str(job_id)
        self.pending.pop(sub.n, None)
        self.c["accepted"] += 1
        stats.record(self.hist["job_accept"], now - sub.due)
        record = {"job_id": sub.job_id, "key": f"lt-{self.run_id}-{sub.n}", "printer_id": sub.printer}
        self.out["accepted"].write(orjson.dumps(record) + b"\n")
        if not watched(self.plan, sub.company):
            self._seq += 1
            heapq.heappush(self.polls, (now + sub.poll_step, self._seq, sub))

    def _poll(self, sub: Submission) -> None:
        headers = self.pos_headers[sub.company]
        self.http.request(
            "GET", f"/api/v1/jobs/{sub.job_id}", headers, b"", lambda a, e: self._polled(sub, a, e)
        )

    def _polled(self, sub: Submission, answer: HttpAnswer | None, error: str) -> None:
        now = time.time()
        state = None
        if answer is None:
            self._error(f"poll: {error}")
        elif answer.status != 200:
            self._error(f"poll: http {answer.status}")
        else:
            try:
                state = orjson.loads(answer.body).get("state")
            except (orjson.JSONDecodeError, AttributeError):
                self._error("poll: an answer that is not a job")
        if state in ("printed", "failed", "expired"):
            self.c["completed"] += 1
            self.c["polled"] += 1
            stats.record(self.hist["job_round_trip"], now - sub.due)
            if state != "printed":
                self._error(f"job: {state}")
        elif not self.stopping:
            sub.poll_step = min(POLL_MAX, sub.poll_step * 2)
            self._seq += 1
            heapq.heappush(self.polls, (now + sub.poll_step, self._seq, sub))

    def _heap_due(self, heap: list[tuple[float, int, Submission]], now: float, act: Any) -> float:
        while heap and heap[0][0] <= now:
            act(heapq.heappop(heap)[2])
        return heap[0][0] if heap else float("inf")

    # ------------------------------------------------------------ reporting

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _registered(self) -> int:
        return sum(
            1
            for p in self.peers
            if p.agent is not None and p.conn is not None and p.conn.state == OPEN and not p.agent.reg_ids
        )

    def _progress(self, now: float) -> None:
        for f in self.out.values():
            f.flush()
        registered = self._registered()
        if not self.ready_sent and (
            registered == len(self.share.agents) or now >= self.t0 + self.plan.ramp + READY_GRACE
        ):
            self.ready_sent = True
            emit({"phase": "ready", "worker": self.worker, "registered": registered})
        open_now = {"agent": 0, "dashboard": 0}
        for conn in self.client.conns.values():
            if conn.state == OPEN:
                open_now[conn.kind] += 1
        emit(
            {
                "phase": "progress",
                "worker": self.worker,
                "t": now,
                "open": open_now,
                "registered": registered,
                "msgs": sum(c.msgs_tx + c.msgs_rx for c in self.counts.values()),
                "errors": sum(self.errors.values()),
                "pending": len(self.pending),
                "cpu_s": round(stats.cpu_seconds() - self.cpu0, 3),
                **{k: self.c[k] for k in ("submitted", "accepted", "completed", "printed", "statuses")},
            }
        )

    def _finish(self) -> None:
        now = time.time()
        self._marks(now)
        start = self.marks.get("t1") or self._snapshot(now)
        end = self.marks.get("t2") or self._snapshot(now)
        self.c["gave_up"] = len(self.pending)
        if self.pending:
            self.errors["submit: gave up (no answer before the end)"] = len(self.pending)
        self.http.close_all()
        self.client.close_all()
        for f in self.out.values():
            f.close()
        window = {
            kind: {k: end["counts"][kind][k] - start["counts"][kind][k] for k in end["counts"][kind]}
            for kind in end["counts"]
        }
        emit(
            {
                "phase": "result",
                "worker": self.worker,
                "window_s": round(end["t"] - start["t"], 3),
                "cpu_s": round(stats.cpu_seconds() - self.cpu0, 3),
                "window_cpu_s": round(end["cpu"] - start["cpu"], 3),
                "hist": {name: stats.encode(h) for name, h in self.hist.items()},
                "bytes": window,
                "window": {k: end["c"][k] - start["c"].get(k, 0) for k in end["c"]},
                "totals": self.c,
                "sent_by_company": {
                    str(c): n - start["sent_by_company"].get(c, 0) for c, n in end["sent_by_company"].items()
                },
                "hellos_by_instance": self.by_instance,
                "open_by_instance": end["open_by_instance"],
                "deflate_accepted": self.client.deflate_accepted,
                "refused": sum(1 for p in self.peers if p.refused),
                "errors": self.errors,
                "files": {name: str(path) for name, path in self.files.items()},
            }
        )


def read_plan_line(fd: int) -> tuple[bytes, bytes]:
    """The coordinator's first line (the plan), read without buffering past it: (line, rest)."""
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            raise SystemExit("no plan on stdin")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line, rest
