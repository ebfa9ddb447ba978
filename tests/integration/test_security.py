"""Hostile input against a real printd: ids, NUL, tokens, limits, monitoring access.

docs/security.md lists what these tests cover; keep the two in step.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from printctl.wsclient import HandshakeRejected, WsClient, ws_url
from tests.conftest import SECRET, Printd, token
from tests.integration.test_jobs import ScriptedAgent, submit

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
