"""Hostile input against a real printd: ids, NUL, tokens, limits, monitoring access.

docs/security.md lists what these tests cover; keep the two in step.
"""

from __future__ import annotations

import os
import resource
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from printctl.wsclient import HandshakeRejected, WsClient, ws_url
from tests.conftest import SECRET, Printd, token
from tests.scripted import ScriptedAgent, submit

SVC = token("service", "acme", sub="pos-1")
ADMIN_ALL = token("admin", "*", sub="ops-1")


def forged(**claims: Any) -> str:
    """A token signed with the real secret but minted without printctl's checks."""
    return jwt.encode({"exp": 4_000_000_000, **claims}, SECRET)


# ------------------------------------------------------------------ item 6: ids


async def test_ids_with_a_colon_are_refused_so_tenants_cannot_share_keys(printd: Printd) -> None:
    """With `acme:eu` as a company, `dispatch:acme:eu:paris` would be resettable by acme's admin."""
    url = ws_url(printd.url)
    for claims in (
        {"role": "agent", "company": "acme:eu", "branch": "paris", "sub": "a"},
        {"role": "agent", "company": "acme", "branch": "eu:paris", "sub": "a"},
    ):
        with pytest.raises(HandshakeRejected) as exc:
            await WsClient.connect(url, token=forged(**claims))
        assert exc.value.status == 401 and "ids must be" in exc.value.message
    r = printd.get("/api/v1/jobs", forged(role="service", company="acme:eu", sub="pos"))
    assert r.status_code == 401 and "ids must be" in r.json()["message"]
    agent = await ScriptedAgent.connect(printd)
    await agent.client.send("printer.status", {"printer_id": "kitchen:1", "status": "online"}, id=7)
    err = await agent._next(agent.client, agent.backlog, "error", 5)
    assert err["id"] == 7 and err["data"]["code"] == "invalid_data" and "printer_id" in err["data"]["message"]
    assert printd.post("/api/v1/printers/p:1/test", SVC).status_code == 400
    await agent.close()


# ------------------------------------------------------------------ item 7: NUL


async def test_nul_in_ids_and_text_is_a_400_on_both_backends(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p: Printd = printd_factory(env=backend)
    agent = await ScriptedAgent.connect(p)
    cases = [
        p.post("/api/v1/jobs", SVC, {"printer_id": "p\x001"}),
        p.post("/api/v1/jobs", SVC, {"printer_id": "p1", "payload": {"text": "a\x00b"}}),
        p.post("/api/v1/jobs", SVC, {"printer_id": "p1", "payload": {"k\x00": 1}}),
        p.get("/api/v1/jobs/abc%00", SVC),
        p.get("/api/v1/jobs?printer=p%001", SVC),
        p.get("/api/v1/printers?branch=b%001", SVC),
        p.post("/api/v1/printers/p1%00/test", SVC),
        p.post("/api/v1/printers/p1/test", SVC, {"payload": {"text": "\x00"}}),
        p.get("/api/v1/fleet/health?company=ac%00me", ADMIN_ALL),
        p.get("/api/v1/jobs?company=ac%00me", ADMIN_ALL),
    ]
    for r in cases:
        assert r.status_code == 400, (r.request.url, r.text)
        assert r.json()["error"] == "bad_request" and "traceback" not in r.text.lower()
    assert "Traceback" not in p.log()
    assert p.get("/api/v1/jobs", SVC).json()["jobs"] == []  # nothing was written
    await agent.close()


async def test_nul_in_agent_frames_is_invalid_data(printd_factory: Any, backend: dict[str, str]) -> None:
    """Before: on PostgreSQL the NUL job_id reached the store, came back as `unavailable` (not
    counted in the error budget) and started a redelivery pass."""
    p: Printd = printd_factory(env=backend)
    agent = await ScriptedAgent.connect(p)
    job_id = submit(p).json()["job_id"]
    job = await agent.dispatch()
    frames = [
        ("job.ack", {"job_id": "a\x00b"}),
        ("job.ack", {"job_id": job_id, "correlation_id": "c\x00"}),
        ("job.result", {"job_id": job_id, "success": False, "message": "jam\x00"}),
        ("job.result", {"job_id": job_id, "success": True, "detail": {"x": ["\x00"]}}),
        ("printer.status", {"printer_id": "p\x002", "status": "online"}),
        ("printer.status", {"printer_id": "p1", "status": "online", "model": "TM\x00"}),
    ]
    for i, (event, data) in enumerate(frames, start=10):
        await agent.client.send(event, data, id=i)
        err = await agent._next(agent.client, agent.backlog, "error", 5)
        assert err["id"] == i and err["data"]["code"] == "invalid_data", (event, err)
    await agent.ack(job)
    await agent.result(job)
    assert p.get(f"/api/v1/jobs/{job_id}", SVC).json()["state"] == "printed"
    assert "Traceback" not in p.log()
    await agent.close()


# ------------------------------------------------------------------ item 8: '*' is admin only


async def test_a_service_token_for_all_companies_is_refused(printd: Printd) -> None:
    star = forged(role="service", company="*", sub="pos")
    for path in ("/api/v1/jobs?company=acme", "/api/v1/printers?company=acme"):
        r = printd.get(path, star)
        assert r.status_code == 403 and "admin tokens only" in r.json()["message"]
    assert printd.get("/api/v1/jobs?company=acme", ADMIN_ALL).status_code == 200


# ------------------------------------------------------------------ item 9: secrets and files


@pytest.mark.parametrize("content", ["", "\n", "tooshort\n"])
def test_development_refuses_an_empty_or_short_secret_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "jwt_secret").write_text(content)
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "PRINTD_CONFIG")}
    run = [sys.executable, "-m", "printd", "run", "--data-dir", str(tmp_path), "--port", "0"]
    r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "jwt_secret is empty or shorter than 32" in r.stderr and "openssl rand -hex 32" in r.stderr


def test_data_directory_is_0700_and_database_files_0600(printd_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    # no JWT_SECRET: development generates one; no DATABASE_URL: the embedded SQLite file
    printd_factory(config={"data_dir": str(data)}, env={"JWT_SECRET": "", "DATABASE_URL": ""})
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("printd.db", "printd.db-wal", "jwt_secret"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


# ------------------------------------------------------------------ item 5: health counts own faults only


def wait_for_sample_after(p: Printd, t: float, timeout: float = 10) -> httpx.Response:
    """The first health answer whose sample was taken after `t` (explicit state, no sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = p.get("/monitoring/health")
        if r.json()["sampled_at"] > t:
            return r
        time.sleep(0.05)
    raise AssertionError("no health sample taken")


async def test_refused_requests_do_not_make_health_degraded(printd_factory: Any) -> None:
    p: Printd = printd_factory(config={"health": {"check_interval": 1.0, "error_rate": 5.0}})
    agent = await ScriptedAgent.connect(p)
    url = ws_url(p.url)
    for _ in range(40):  # 400 upgrades without a token, 401s, 404s, malformed heads, bad frames
        with pytest.raises(HandshakeRejected):
            await WsClient.connect(url, token=None)
        assert p.get("/api/v1/jobs").status_code == 401
        assert p.get("/nope").status_code == 404
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"BLAH\x00 nonsense\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400")
    for i in range(15):
        await agent.client.send("job.ack", {"job_id": "nope:nope"}, id=i)
        assert (await agent._next(agent.client, agent.backlog, "error", 5))["id"] == i
    r = wait_for_sample_after(p, time.time())
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok", body
    assert body["checks"]["errors"]["value"] == 0
    metrics = p.get("/monitoring/metrics", ADMIN_ALL).text
    assert "printd_http_errors_total" in metrics and "printd_http_server_errors_total 0.0" in metrics
    await agent.close()


# ------------------------------------------------------------------ item 11: head limit and time


def read_response(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.parametrize("pieces", [1, 8])
def test_a_head_over_16_kib_gets_431_however_it_arrives(printd: Printd, pieces: int) -> None:
    head = b"GET /monitoring/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", printd.port), timeout=10) as s:
        size = -(-len(head) // pieces)
        for i in range(0, len(head), size):
            try:
                s.sendall(head[i : i + size])
            except BrokenPipeError:
                break  # refused before the rest was sent: the answer is waiting
        assert read_response(s).startswith(b"HTTP/1.1 431")
    # a head just under the limit is still served
    ok = b"GET /monitoring/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", printd.port), timeout=10) as s:
        s.sendall(ok)
        assert read_response(s).startswith(b"HTTP/1.1 200")


def test_the_next_head_on_a_keepalive_connection_gets_the_handshake_timeout(printd_factory: Any) -> None:
    p: Printd = printd_factory(config={"server": {"handshake_timeout": 1.0, "keepalive_timeout": 60.0}})
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"GET /monitoring/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        s.sendall(b"GET /monitoring/health HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert b"HTTP/1.1 408" in read_response(s)
        assert time.monotonic() - started < 8  # handshake_timeout (1 s), not keepalive_timeout (60 s)


# ------------------------------------------------------------------ item 3: HTTP write timeout


def test_a_client_that_pipelines_and_never_reads_is_dropped(printd_factory: Any) -> None:
    p: Printd = printd_factory(config={"server": {"write_timeout": 1.0}})
    request = b"GET /nope-" + b"x" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"  # ~2 KB 404s back
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", p.port))
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and sent < 20_000:
            try:
                s.send(request)
                sent += 1
            except BlockingIOError:
                break  # printd stopped reading: its writes are blocked on us
            except OSError:
                break  # already dropped
        assert sent < 20_000
        while time.monotonic() < deadline:
            if "printd_http_write_timeouts_total 1.0" in p.get("/monitoring/metrics", ADMIN_ALL).text:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the stalled connection was not dropped")
    finally:
        s.close()
    assert p.get("/monitoring/health").status_code == 200


# ------------------------------------------------------------------ item 2: out of file descriptors


def test_running_out_of_file_descriptors_does_not_end_printd(printd_factory: Any) -> None:
    """printd raises its soft fd limit to the hard one at start; lowering both afterwards gives
    the same low ceiling. The health sampler then fails with EMFILE (it used to end the process)."""
    p: Printd = printd_factory(config={"health": {"check_interval": 0.2}})
    assert p.proc is not None
    used = len(os.listdir(f"/proc/{p.proc.pid}/fd"))
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (used + 8, used + 8))
    clients = []
    try:
        for _ in range(40):  # more connections than fds left: the rest wait in the backlog
            clients.append(socket.create_connection(("127.0.0.1", p.port), timeout=5))
        deadline = time.monotonic() + 15
        while "health sample failed" not in p.log():
            assert p.proc.poll() is None, p.log()
            assert time.monotonic() < deadline, "the sampler never ran out of fds"
            time.sleep(0.05)
    finally:
        for c in clients:
            c.close()
    deadline = time.monotonic() + 15
    while True:  # the backlog drains, fds free up, printd answers again
        try:
            if p.get("/monitoring/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert p.proc.poll() is None, p.log()
        assert time.monotonic() < deadline, p.log()
        time.sleep(0.1)
    assert p.proc.poll() is None


# ------------------------------------------------------------------ item 12: monitoring names tenants


METRICS_TOKEN = "7c4a8d09ca3762af61e59520943dc26494f8941b"


async def test_monitoring_needs_a_token_except_health(printd_factory: Any) -> None:
    p: Printd = printd_factory(env={"PRINTD_METRICS_TOKEN": METRICS_TOKEN})
    agent = await ScriptedAgent.connect(p)
    assert p.post("/monitoring/circuits/dispatch:acme:b1/reset", ADMIN_ALL).status_code == 404
    submit(p)  # creates dispatch:acme:b1
    await agent.dispatch()
    other = await ScriptedAgent.connect(p, ("g1",), company="globex", sub="agent-g")
    submit(p, "g1", tok=token("service", "globex", sub="pos-g"))
    await other.dispatch()
    paths = ("/monitoring/instance", "/monitoring/metrics", "/monitoring/circuits")
    for path in paths:
        r = p.get(path)
        assert r.status_code == 401 and "PRINTD_METRICS_TOKEN" in r.json()["message"], path
        assert "acme" not in r.text and "globex" not in r.text
        assert p.get(path, SVC).status_code == 403
        assert p.get(path, METRICS_TOKEN).status_code == 200
        assert p.get(path, ADMIN_ALL).status_code == 200
    assert 'circuit="dispatch:globex:b1"' in p.get("/monitoring/metrics", METRICS_TOKEN).text
    assert p.get("/monitoring/health").status_code == 200  # load balancers need no token
    acme_admin = token("admin", "acme", sub="ops-acme")
    assert p.get("/monitoring/metrics", acme_admin).status_code == 403
    names = {c["name"] for c in p.get("/monitoring/circuits", acme_admin).json()["circuits"]}
    assert names == {"dispatch:acme:b1"}  # its own branches only: no store, no globex
    r = p.post("/monitoring/circuits/dispatch:acme:b1/reset", acme_admin)
    assert r.status_code == 200
    assert "circuit admin action" in p.log() and "sub=ops-acme" in p.log()  # item 13: who did it
    # moving connections is an action on every company's agents: neither the metrics token (it
    # only reads) nor a company's admin may; the agents stay where they are
    rebalance = "/monitoring/rebalance?share=1"
    assert p.post(rebalance, METRICS_TOKEN).status_code == 401
    assert p.post(rebalance, acme_admin).status_code == 403
    assert p.get("/monitoring/instance", ADMIN_ALL).json()["connections"]["agent"] == 2
    for cmd in (["instance", "--json"], ["circuits", "list", "--json"]):
        env = {k: v for k, v in os.environ.items() if k not in ("PRINTD_TOKEN", "PRINTD_METRICS_TOKEN")}
        run = [sys.executable, "-m", "printctl.main", *cmd, "--url", p.url]
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "401" in r.stderr, r.stderr  # a token to fix: usage
        env["PRINTD_METRICS_TOKEN"] = METRICS_TOKEN
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    await other.close()
    await agent.close()


# ------------------------------------------------------------------ item 13: bounded work per request


async def test_printers_are_paginated_and_job_lists_carry_no_payload(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd, tuple(f"p{i}" for i in range(5)))
    submit(printd, "p1", payload={"blob": "x" * 100_000})
    jobs = printd.get("/api/v1/jobs?limit=1000", SVC).json()["jobs"]
    assert len(jobs) == 1 and "payload" not in jobs[0] and len(str(jobs)) < 5000
    seen: list[str] = []
    cursor = None
    while True:
        page = printd.get("/api/v1/printers?limit=2" + (f"&cursor={cursor}" if cursor else ""), SVC).json()
        assert page["count"] <= 2
        seen += [p["printer_id"] for p in page["printers"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in range(5)]
    assert printd.get("/api/v1/printers?limit=1001", SVC).status_code == 400
    assert printd.get("/api/v1/printers?cursor=a:b", SVC).status_code == 400
    await agent.close()
