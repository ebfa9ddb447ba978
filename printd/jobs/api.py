"""The back office's HTTP API: submit and read jobs, test printers, read the fleet.

Every route takes a `service` or `admin` token and works inside the token's company; an admin
token for company "*" names the company in the request. Input is checked before anything is
written, so a refused request leaves nothing half-done.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import orjson
import structlog

from printd.auth import AuthError, Claims, TokenVerifier, bearer_token
from printd.cache import TTLCache
from printd.config import JobsConfig
from printd.http.router import HttpError, HttpRequest, HttpResponse, Router, json_response
from printd.inputs import ID_RULE, is_id, json_problem
from printd.jobs.service import JobService
from printd.model import JOB_KINDS, JobState
from printd.printers import MoveConflict, PrinterRegistry
from printd.ratelimit import PrinterTestLimits
from printd.store import Store, StoreUnavailable
from printd.store.base import BacklogFull

log = structlog.get_logger("printd.api")
API_ROLES = ("service", "admin")
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


class JobsApi:
    def __init__(
        self,
        jobs: JobService,
        store: Store,
        verifier: TokenVerifier,
        limits: PrinterTestLimits,
        fleet_cache: TTLCache[str, dict[str, Any]],
        config: JobsConfig,
        printers: PrinterRegistry,
    ) -> None:
        self.printers = printers
        self.jobs = jobs
        self.store = store
        self.verifier = verifier
        self.limits = limits
        self.fleet_cache = fleet_cache
        self.config = config

    def routes(self, router: Router) -> None:
        router.add("POST", "/api/v1/jobs", self.create_job)
        router.add("GET", "/api/v1/jobs", self.list_jobs)
        router.add("GET", "/api/v1/jobs/{job_id}", self.get_job)
        router.add("GET", "/api/v1/printers", self.list_printers)
        router.add("POST", "/api/v1/printers/{printer_id}/test", self.test_printer)
        router.add("POST", "/api/v1/printers/{printer_id}/move", self.move_printer)
        router.add("GET", "/api/v1/fleet/health", self.fleet_health)

    # ---------------------------------------------------------------- helpers

    def _claims(self, req: HttpRequest) -> Claims:
        try:
            token = bearer_token(req.headers.get("authorization"), None)
            return self.verifier.verify(token, roles=API_ROLES)
        except AuthError as exc:
            raise HttpError(exc.status, exc.message) from None

    def _company(self, claims: Claims, requested: Any) -> str:
        if claims.company != "*":
            if requested not in (None, claims.company):
                raise HttpError(403, f"this token is for company {claims.company!r}")
            return claims.company
        if not isinstance(requested, str) or not requested:
            raise HttpError(400, "an all-companies admin token must name the company (field or ?company=)")
        return _id("company", requested)

    # ---------------------------------------------------------------- routes

    async def create_job(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        company = self._company(claims, body.get("company"))
        printer_id = body.get("printer_id")
        kind = body.get("kind", "print")
        payload = body.get("payload", {})
        printer_id = _id("printer_id", printer_id)
        if not isinstance(kind, str) or kind not in JOB_KINDS:
            raise HttpError(400, f"'kind' must be one of {', '.join(sorted(JOB_KINDS))}")
        _payload(payload, self.config.max_payload_bytes)
        key = req.headers.get("idempotency-key")
        if key is not None and not _KEY_RE.match(key):
            raise HttpError(400, "Idempotency-Key must be 1-255 visible ASCII characters")
        try:
            job, created = await self.jobs.submit(
                company=company, printer_id=printer_id, kind=kind, payload=payload, idempotency_key=key
            )
        except LookupError:
            raise HttpError(404, f"unknown printer {printer_id!r} in company {company!r}") from None
        except BacklogFull as exc:
            raise _backlog_full(exc) from None
        if not created and (job.printer_id != printer_id or job.kind != kind or job.payload != payload):
            raise HttpError(
                409,
                "this Idempotency-Key was used for a different job",
                extra={"job_id": job.job_id, "correlation_id": job.correlation_id},
            )
        body_out: dict[str, Any] = {
            "job_id": job.job_id,
            "correlation_id": job.correlation_id,
            "state": str(job.state),
        }
        if not created:
            fresh = await self.store.get_job(job.job_id, company)
            body_out["state"] = str((fresh or job).state)
            body_out["idempotent_replay"] = True
        return json_response(202, body_out, [("Location", f"/api/v1/jobs/{job.job_id}")])

    async def get_job(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        company = self._company(claims, req.query.get("company"))
        job = await self.store.get_job(_id("job_id", req.params["job_id"]), company)
        if job is None:
            raise HttpError(404, f"no job {req.params['job_id']!r} in company {company!r}")
        return json_response(200, job.to_json())

    async def list_jobs(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        q = req.query
        company = self._company(claims, q.get("company"))
        state = q.get("state")
        if state is not None and state not in {s.value for s in JobState}:
            raise HttpError(400, f"unknown state {state!r}; one of {', '.join(s.value for s in JobState)}")
        limit = _limit(q)
        printer = q.get("printer")
        jobs = await self.store.list_jobs(
            company,
            printer_id=None if printer is None else _id("printer", printer),
            state=JobState(state) if state else None,
            limit=limit,
        )
        return json_response(200, {"jobs": [j.to_json() for j in jobs], "count": len(jobs)})

    async def list_printers(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        company = self._company(claims, req.query.get("company"))
        q = req.query
        branch = q.get("branch")
        cursor = q.get("cursor")
        limit = _limit(q)
        printers = await self.store.list_printers(
            company,
            None if branch is None else _id("branch", branch),
            after=None if cursor is None else _id("cursor", cursor),
            limit=limit + 1,  # one more tells whether another page follows
        )
        page = printers[:limit]
        online = await self.jobs.agents_online(list({(company, p.agent_id) for p in page}))
        out = []
        for p in page:
            item = p.to_json()
            item["agent_online"] = (company, p.agent_id) in online
            out.append(item)
        next_cursor = out[-1]["printer_id"] if len(printers) > limit else None
        return json_response(200, {"printers": out, "count": len(out), "next_cursor": next_cursor})

    async def test_printer(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        body: Any = req.json() if req.body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        company = self._company(claims, body.get("company") or req.query.get("company"))
        printer_id = _id("printer_id", req.params["printer_id"])
        printer = await self.store.get_printer(company, printer_id)
        if printer is None:
            raise HttpError(404, f"unknown printer {printer_id!r} in company {company!r}")
        decision = await self.limits.hit(company, printer.branch, printer_id)
        if not decision.allowed:
            q = self.limits.quota
            retry = max(1, math.ceil(decision.retry_after))
            raise HttpError(
                429,
                f"printer tests are limited to {q.branch_limit} per branch and {q.printer_limit} per printer "
                f"every {q.window:g} s; retry in {retry} s",
                headers=[("Retry-After", str(retry))],
            )
        payload = _payload(body.get("payload", {"text": "printd test page"}), self.config.max_payload_bytes)
        try:
            outcome = await self.jobs.test_printer(company, printer_id, payload)
        except BacklogFull as exc:
            raise _backlog_full(exc) from None
        job = outcome.job
        common = {"job_id": job.job_id, "correlation_id": job.correlation_id, "printer_id": printer_id}
        if outcome.error is not None:
            raise HttpError(outcome.status, outcome.error, extra={"success": False, **common})
        result = outcome.result or {}
        return json_response(
            200,
            {
                "success": bool(result.get("success")),
                "message": result.get("message"),
                "state": str(job.state),
                **common,
            },
        )

    async def move_printer(self, req: HttpRequest) -> HttpResponse:
        """An operator moves a printer to another branch or agent (admin only, logged with the
        caller's `sub`); its queued jobs follow it."""
        claims = self._claims(req)
        if claims.role != "admin":
            raise HttpError(403, "moving a printer needs an admin token")
        body: Any = req.json() if req.body else {}
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        company = self._company(claims, body.get("company") or req.query.get("company"))
        branch, agent_id = _id("branch", body.get("branch")), _id("agent_id", body.get("agent_id"))
        printer_id = req.params["printer_id"]
        try:
            moved = await self.printers.move(company, printer_id, branch, agent_id)
        except MoveConflict as exc:
            raise HttpError(409, str(exc)) from None
        if moved is None:
            raise HttpError(404, f"unknown printer {printer_id!r} in company {company!r}")
        log.info(
            "printer moved",
            company=company,
            printer_id=printer_id,
            from_branch=moved.moved_from[0],
            from_agent=moved.moved_from[1],
            to_branch=branch,
            to_agent=agent_id,
            jobs_moved=moved.jobs_moved,
            by=claims.sub,
        )
        if moved.jobs_moved:
            await self.jobs.deliver_queued(company, agent_id)  # the jobs that came with the printer
        return json_response(
            200,
            {
                "printer": moved.printer.to_json(),
                "moved_from": {"branch": moved.moved_from[0], "agent_id": moved.moved_from[1]},
                "jobs_moved": moved.jobs_moved,
            },
        )

    async def fleet_health(self, req: HttpRequest) -> HttpResponse:
        claims = self._claims(req)
        company = self._company(claims, req.query.get("company"))

        async def load() -> dict[str, Any]:
            return await self.store.fleet_summary(company, now=time.time())

        try:
            res = await self.fleet_cache.get_or_load(company, load)
        except StoreUnavailable as exc:  # StoreCircuitOpen included
            raise HttpError(503, f"fleet data unavailable: {exc}", headers=[("Retry-After", "5")]) from None
        return json_response(
            200,
            {
                "company": company,
                **res.value,
                "cached": res.hit,
                "stale": res.stale,
                "age_s": round(res.age, 3),
            },
        )


def _id(name: str, value: Any) -> str:
    """An id from a path, query or body: the charset of `printd.inputs`, else 400."""
    if not is_id(value):
        raise HttpError(400, f"{name!r} must be {ID_RULE}")
    assert isinstance(value, str)
    return value


def _backlog_full(exc: BacklogFull) -> HttpError:
    """429: nothing was stored; the printer's agent must work off its backlog first."""
    return HttpError(
        429,
        f"printer {exc.printer_id!r} already has {exc.limit} unfinished jobs; nothing was stored."
        " Its agent is probably offline: check it, or retry later",
        headers=[("Retry-After", "30")],
    )


def _payload(value: Any, max_bytes: int) -> dict[str, Any]:
    """A job's payload as every job kind accepts it (prints and test pages alike): an object
    without NUL, no deeper than printd can write back into a dispatch frame (a deeper one would be
    stored and then fail at every dispatch), within the size limit."""
    if not isinstance(value, dict):
        raise HttpError(400, "'payload' must be a JSON object")
    if (problem := json_problem(value, "'payload'")) is not None:
        raise HttpError(400, problem)
    if len(orjson.dumps(value)) > max_bytes:
        raise HttpError(413, f"'payload' is larger than {max_bytes} bytes")
    return value


def _limit(query: dict[str, str]) -> int:
    """`?limit=` of a listing: 1-1000, default 100."""
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise HttpError(400, "'limit' must be an integer") from None
    if not 1 <= limit <= 1000:
        raise HttpError(400, "'limit' must be 1-1000")
    return limit
