#!/usr/bin/env python3
"""Agents, dashboards and points of sale for cluster_bench.py, on printctl.loadgen's epoll client.

One process, one loop (several targets: one loadgen Client each, polled through one epoll). The
agents answer dispatches as the reference agent does (printctl.loadgen.sim.SimAgent: journal,
ack, result), register their printer with a status that printd acks, and reconnect with the
reference agent's policy (printctl.keepalive.Reconnect) whenever a connection ends. Times are
epoch seconds (time.time()), so the coordinator can set them beside its own (a SIGKILL, a Redis
stop). Every loop ends by --max-s at the latest.

Modes:
  hold  --url U --agents N [--first F] [--companies C] [--job-rate R]: N agents through U (one
        instance or the nginx front). Every open (with the instance its `hello` names) and every
        close is recorded. With --job-rate, a point of sale submits R jobs/s through U for this
        worker's agents (Idempotency-Key, retried like a POS) from the "jobs" line on; each job's
        due, accepted (202 seen) and printed (dispatch at the agent) times are reported.
  jobs  --urls U1,U2,U3 --agents-per-instance M --rate R --warmup W --duration D: M agents and
        one dashboard on each instance, one company. Job n is POSTed to instance n % 3 for an
        agent on the same instance (even n // 3) or on another one (odd), at R jobs/s, open loop.
        Round trip = due -> job.completed seen by the dashboard on the instance that took the POST.

Lines out (JSON): {"phase":"ready"} once every agent is registered; {"phase":"progress"} every
second; {"phase":"result"} after the coordinator's "stop" (or stdin closed). Lines in: "jobs"
(hold: start the job flow now), "stop".
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import sys
import time
import uuid
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from printctl.keepalive import Reconnect  # noqa: E402
from printctl.loadgen import stats  # noqa: E402
from printctl.loadgen.client import OPEN, Client, Conn  # noqa: E402
from printctl.loadgen.http import HttpAnswer, HttpPool  # noqa: E402
from printctl.loadgen.payloads import status_fields  # noqa: E402
from printctl.loadgen.sim import SimAgent, Verdict, status_templates, submit_verdict  # noqa: E402
from printctl.loadgen.target import parse_target  # noqa: E402
from printctl.loadgen.workers import emit  # noqa: E402
from printd.auth import mint_token  # noqa: E402

MAX_HANDSHAKES = 256  # handshakes in flight per process
CONNECT_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
STATUS_BYTES = 500


class Agent:
    """One simulated agent across its reconnects."""

    __slots__ = ("index", "client", "request", "conn", "policy", "sim", "head", "reg_id", "tail")

    def __init__(self, index: int, client: Client, request: bytes, sim: SimAgent) -> None:
        self.index = index
        self.client = client
        self.request = request
        self.conn: Conn | None = None
        self.policy = Reconnect()
        self.sim = sim
        _head, self.head, self.tail = status_templates(sim.printers[0], status_fields(index, STATUS_BYTES))
        self.reg_id = 0  # the id of the registering status until printd acks it


class Loop:
    """The agents of every target in one process: connect, register, answer, reconnect."""

    def __init__(self, a: argparse.Namespace, urls: list[str]) -> None:
        self.a = a
        self.secret = os.environ.get("JWT_SECRET") or sys.exit("JWT_SECRET is not set")
        self.run_id = uuid.uuid4().hex[:8]
        self.clients = [
            Client(parse_target(u), auth="header", control=sys.stdin.fileno() if i == 0 else None)
            for i, u in enumerate(urls)
        ]
        self.ep = select.epoll()
        for c in self.clients:
            self.ep.register(c.ep.fileno(), select.EPOLLIN)
            c.on_open, c.on_close, c.on_message = self._opened, self._closed, self._message
        self.agents: dict[tuple[int, int], Agent] = {}  # (client, index) -> agent
        self.by_conn: dict[int, Agent] = {}  # id(conn) -> agent
        self.events: list[tuple[int, str, float, str]] = []  # (agent, "open"|"close", t, instance|why)
        self.errors: dict[str, int] = {}
        self.reconnects: list[tuple[float, int, Agent]] = []
        self.handshaking = 0
        self.todo: list[Agent] = []
        self.printed: dict[str, float] = {}  # job id -> first dispatch at its agent
        self.stopping = False
        self.jobs_go = False
        self.cpu0 = stats.cpu_seconds()

    def token(self, role: str, company: int, sub: str, branch: str | None = None) -> str:
        return mint_token(
            self.secret, role=role, company=f"c-{company}", sub=sub, branch=branch, ttl=6 * 3600
        )

    def add_agent(self, ci: int, index: int, company: int) -> Agent:
        client = self.clients[ci]
        sub = f"agent-{index}"
        req = client.request_for(self.token("agent", company, sub, f"b-{company}-{index % 4}"))
        sim = SimAgent(index, company, sub, (f"p-{index}",), self.run_id)
        agent = Agent(index, client, req, sim)
        self.agents[(ci, index)] = agent
        self.todo.append(agent)
        return agent

    # ---- connections
    def connect(self, agent: Agent) -> None:
        conn = agent.client.start(agent.request, "agent", agent.index, agent.sim.company)
        agent.conn = conn
        self.by_conn[id(conn)] = agent
        self.handshaking += 1
        if conn.why:  # refused at once: connect() failed synchronously
            self._closed(conn)

    def _opened(self, conn: Conn) -> None:
        agent = self.by_conn.get(id(conn))
        if agent is None:
            return  # a dashboard
        self.handshaking -= 1
        agent.policy.hello()
        self.events.append((agent.index, "open", time.time(), conn.instance))
        agent.sim.last_id = 0
        agent.reg_id = agent.sim.next_id()
        agent.client.send_message(conn, agent.head % agent.reg_id + b"%.6f" % time.time() + agent.tail)

    def _closed(self, conn: Conn) -> None:
        agent = self.by_conn.pop(id(conn), None)
        if agent is None:
            self.error(f"dashboard: {conn.why}")
            return
        if conn.t_open == 0.0:
            self.handshaking -= 1
        self.events.append((agent.index, "close", time.time(), conn.why))
        if self.stopping or agent.conn is not conn:
            return
        agent.conn = None
        self.error(f"agent: {conn.why}")
        delay = agent.policy.closed(conn.code) if conn.t_open else agent.policy.failed()
        heapq.heappush(self.reconnects, (time.time() + delay, id(agent), agent))

    def _message(self, conn: Conn, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error("not JSON")
            return
        if not isinstance(msg, dict):
            return
        event, data = msg.get("event"), msg.get("data")
        agent = self.by_conn.get(id(conn))
        if agent is None:
            self.dashboard_message(conn, event, data)
        elif event == "ack" and msg.get("id") == agent.reg_id:
            agent.reg_id = 0
        elif event == "job.dispatch":
            now = time.time()
            reply = agent.sim.dispatch(data, now)
            for frame in reply.frames:
                agent.client.send_message(conn, frame)
            job_id = data.get("job_id") if isinstance(data, dict) else None
            if reply.printed is not None and isinstance(job_id, str):
                self.printed.setdefault(job_id, now)
        elif event == "error":
            self.error(f"printd error {data.get('code') if isinstance(data, dict) else data}")

    def dashboard_message(self, conn: Conn, event: Any, data: Any) -> None:
        """Dashboards are the jobs mode's: see JobsLoop."""

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # ---- the loop
    def registered(self) -> int:
        return sum(
            1 for a in self.agents.values() if a.conn is not None and a.conn.state == OPEN and not a.reg_id
        )

    def open_by_instance(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.agents.values():
            if a.conn is not None and a.conn.state == OPEN:
                out[a.conn.instance] = out.get(a.conn.instance, 0) + 1
        return out

    def step(self, timeout: float) -> None:
        now = time.time()
        while self.todo and self.handshaking < MAX_HANDSHAKES:
            self.connect(self.todo.pop())
        while self.reconnects and self.reconnects[0][0] <= now and self.handshaking < MAX_HANDSHAKES:
            self.connect(heapq.heappop(self.reconnects)[2])
        mono = time.monotonic()
        for c in self.clients:
            for conn in [
                x for x in c.conns.values() if x.state < OPEN and mono - x.t_start > CONNECT_TIMEOUT
            ]:
                c.fail(conn, "handshake timeout")
        if self.reconnects:
            timeout = min(timeout, max(0.0, self.reconnects[0][0] - now))
        if self.todo:
            timeout = min(timeout, 0.01)
        if len(self.clients) == 1:
            self.clients[0].poll(timeout)
        else:
            self.ep.poll(max(0.0, timeout))
            for c in self.clients:
                c.poll(0)
        for line in self.control():
            if line == "stop":
                self.stopping = True
            elif line == "jobs":
                self.jobs_go = True

    def control(self) -> list[str]:
        c = self.clients[0]
        lines = list(c.control_lines)
        c.control_lines.clear()
        if c.control_eof:
            self.stopping = True
        return lines

    def progress(self) -> dict[str, Any]:
        return {
            "phase": "progress",
            "t": time.time(),
            "agents": len(self.agents),
            "open": sum(self.open_by_instance().values()),
            "registered": self.registered(),
            "open_by_instance": self.open_by_instance(),
            "errors": sum(self.errors.values()),
            "cpu_s": round(stats.cpu_seconds() - self.cpu0, 3),
        }


class HoldLoop(Loop):
    """`hold`: agents through one URL, and optionally a point of sale's job flow for them."""

    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__(a, [a.url])
        for i in range(a.first, a.first + a.agents):
            self.add_agent(0, i, i % a.companies)
        self.pool = HttpPool(self.clients[0], size=16, timeout=HTTP_TIMEOUT)
        json_body = "Content-Type: application/json\r\n"
        self.pos = {
            c: f"Authorization: Bearer {self.token('service', c, f'pos-{c}')}\r\n{json_body}"
            for c in range(a.companies)
        }
        self.jobs: list[list[Any]] = []  # [n, due, accepted, job_id, submits]
        self.retries: list[tuple[float, int, list[Any]]] = []

    def submit(self, job: list[Any]) -> None:
        n = job[0]
        agent = self.agents[(0, self.a.first + n % self.a.agents)]
        body = orjson.dumps({"printer_id": agent.sim.printers[0], "payload": {"text": f"bench {n}"}})
        headers = self.pos[agent.sim.company] + f"Idempotency-Key: cb-{self.run_id}-{n}\r\n"
        job[4] += 1
        self.pool.request(
            "POST", "/api/v1/jobs", headers, body, lambda ans, err: self.answered(job, ans, err)
        )

    def answered(self, job: list[Any], answer: HttpAnswer | None, error: str) -> None:
        verdict, delay, kind = submit_verdict(answer, error)
        if kind:
            self.error(kind)
        if verdict is Verdict.RETRY and not self.stopping:
            heapq.heappush(self.retries, (time.time() + delay, job[0], job))
        elif verdict is Verdict.ACCEPTED and answer is not None:
            job[2] = time.time()
            job[3] = orjson.loads(answer.body).get("job_id")

    def run(self) -> None:
        end = time.time() + self.a.max_s
        ready_sent = False
        next_progress = time.time() + 1.0
        next_job = 0.0
        interval = 1.0 / self.a.job_rate if self.a.job_rate > 0 else 0.0
        while not self.stopping and time.time() < end:
            now = time.time()
            if self.jobs_go and interval:
                if not next_job:
                    next_job = now
                while next_job <= now:
                    job = [len(self.jobs), next_job, 0.0, None, 0]
                    self.jobs.append(job)
                    self.submit(job)
                    next_job += interval
            while self.retries and self.retries[0][0] <= now:
                self.submit(heapq.heappop(self.retries)[2])
            if not ready_sent and self.registered() == len(self.agents):
                ready_sent = True
                emit({**self.progress(), "phase": "ready"})
            if now >= next_progress:
                next_progress = now + 1.0
                self.pool.sweep(time.monotonic())
                emit(self.progress())
            due = next_progress
            if self.jobs_go and interval:
                due = min(due, next_job)
            if self.retries:
                due = min(due, self.retries[0][0])
            self.step(max(0.0, min(0.05, due - time.time())))
        self.stopping = True
        jobs = [
            [due, acc, self.printed.get(jid) if jid else None, tries]
            for _n, due, acc, jid, tries in self.jobs
        ]
        emit(
            {
                **self.progress(),
                "phase": "result",
                "events": self.events,
                "jobs": jobs,
                "errors": self.errors,
            }
        )


class JobsLoop(Loop):
    """`jobs`: same-instance against cross-instance round trips, in one open-loop stream."""

    def __init__(self, a: argparse.Namespace) -> None:
        urls = [u for u in a.urls.split(",") if u]
        super().__init__(a, urls)
        self.n_inst = len(urls)
        m = a.agents_per_instance
        for ci in range(self.n_inst):
            for k in range(m):
                self.add_agent(ci, ci * m + k, 0)
        self.seen: list[dict[str, float]] = [{} for _ in urls]  # per instance: job id -> job.completed
        self.dash = []
        for ci, c in enumerate(self.clients):
            conn = c.start(c.request_for(self.token("dashboard", 0, f"dash-{ci}")), "dashboard", ci, 0)
            self.dash.append(conn)
        svc = self.token("service", 0, "pos-0")
        self.headers = f"Authorization: Bearer {svc}\r\nContent-Type: application/json\r\n"
        self.pools = [HttpPool(c, size=16, timeout=HTTP_TIMEOUT) for c in self.clients]
        self.jobs: list[dict[str, Any]] = []

    def dashboard_message(self, conn: Conn, event: Any, data: Any) -> None:
        if event == "job.completed" and isinstance(data, dict) and isinstance(data.get("job_id"), str):
            self.seen[conn.index].setdefault(data["job_id"], time.time())

    def plan(self, n: int) -> tuple[int, bool, Agent]:
        """Job n: (instance that takes the POST, cross?, the agent)."""
        s = n % self.n_inst
        cross = (n // self.n_inst) % 2 == 1 and self.n_inst > 1
        target = (s + 1 + (n // (2 * self.n_inst)) % (self.n_inst - 1)) % self.n_inst if cross else s
        m = self.a.agents_per_instance
        return s, cross, self.agents[(target, target * m + (n // self.n_inst) % m)]

    def fire(self, n: int, due: float) -> None:
        s, cross, agent = self.plan(n)
        job: dict[str, Any] = {"n": n, "due": due, "s": s, "cross": cross, "agent": agent.index}
        self.jobs.append(job)
        body = orjson.dumps({"printer_id": agent.sim.printers[0], "payload": {"text": f"bench {n}"}})
        headers = self.headers + f"Idempotency-Key: cbj-{self.run_id}-{n}\r\n"

        def done(answer: HttpAnswer | None, error: str) -> None:
            if answer is None or answer.status != 202:
                self.error(f"submit: {answer.status if answer else error}")
                return
            job["accepted"] = time.time()
            job["job_id"] = orjson.loads(answer.body).get("job_id")

        self.pools[s].request("POST", "/api/v1/jobs", headers, body, done)

    def run(self) -> None:
        a = self.a
        end = time.time() + a.max_s
        t_ready = 0.0
        while time.time() < end and not self.stopping:  # connect and register everyone
            if self.registered() == len(self.agents) and all(d.state == OPEN for d in self.dash):
                t_ready = time.time()
                break
            self.step(0.05)
        emit({**self.progress(), "phase": "ready", "ok": bool(t_ready)})
        if not t_ready:
            emit({"phase": "result", "error": "agents not registered in time", "errors": self.errors})
            return
        start = time.time() + 0.5
        m0, m1 = start + a.warmup, start + a.warmup + a.duration
        interval = 1.0 / a.rate
        n = 0
        c0 = stats.cpu_seconds()
        while time.time() < min(end, m1 + a.grace) and not self.stopping:
            now = time.time()
            while start + n * interval <= min(now, m1 - 1e-9):
                self.fire(n, start + n * interval)
                n += 1
            for p in self.pools:
                p.sweep(time.monotonic())
            nxt = start + n * interval if start + n * interval < m1 else m1 + a.grace
            self.step(max(0.0, min(0.05, nxt - time.time())))
        cpu = stats.cpu_seconds() - c0
        out: dict[str, Any] = {"phase": "result", "sent": n, "errors": self.errors}
        for kind in ("same", "cross"):
            rtt, printed, accept = stats.new_histogram(), stats.new_histogram(), stats.new_histogram()
            lost = 0
            for j in self.jobs:
                if j["cross"] != (kind == "cross") or not m0 <= j["due"] < m1:
                    continue
                jid = j.get("job_id")
                seen = self.seen[j["s"]].get(jid) if jid else None
                if "accepted" in j:
                    stats.record(accept, j["accepted"] - j["due"])
                if jid in self.printed:
                    stats.record(printed, self.printed[jid] - j["due"])
                if seen is None:
                    lost += 1
                else:
                    stats.record(rtt, seen - j["due"])
            out[kind] = {
                "round_trip": stats.summarize(rtt),
                "printed": stats.summarize(printed),
                "accepted": stats.summarize(accept),
                "not_seen": lost,
            }
        out["client_cpu_pct"] = round(100 * cpu / max(1e-6, time.time() - start), 1)
        out["open_by_instance"] = self.open_by_instance()
        emit(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["hold", "jobs"])
    ap.add_argument("--url", default="", help="hold: one instance or the front")
    ap.add_argument("--urls", default="", help="jobs: the instances, comma separated")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--first", type=int, default=0, help="hold: index of the first agent")
    ap.add_argument("--companies", type=int, default=10)
    ap.add_argument("--job-rate", type=float, default=0.0, help="hold: jobs/s from the 'jobs' line on")
    ap.add_argument("--agents-per-instance", type=int, default=5)
    ap.add_argument("--rate", type=float, default=50.0, help="jobs: jobs/s")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--grace", type=float, default=3.0, help="jobs: wait this long after the window")
    ap.add_argument("--max-s", type=float, default=600.0, help="the process ends by then whatever happens")
    a = ap.parse_args()
    if a.max_s > 3600 or a.duration + a.warmup > 600 or a.rate > 5000 or a.job_rate > 5000:
        ap.error("keep runs bounded: max-s <= 3600, warmup + duration <= 600, rates <= 5000/s")
    stats.raise_nofile(a.agents + 64 if a.mode == "hold" else 256)
    if a.mode == "hold":
        HoldLoop(a).run()
    else:
        JobsLoop(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
