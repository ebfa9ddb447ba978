"""Requests, responses and path routing for the JSON API and the monitoring endpoints."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.target.partition("?")[2]).items()}

    def json(self) -> Any:
        """The body as JSON; a 400 that says why when it is not."""
        if not self.body:
            raise HttpError(400, "request body is empty; send a JSON object")
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(obj), JSON, headers or [])


class HttpError(Exception):
    """An error answer: status, a message for the caller, optional extra headers and fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.extra = extra or {}

    def response(self) -> HttpResponse:
        body = {"error": _REASONS.get(self.status, "error"), "message": self.message, **self.extra}
        return json_response(self.status, body, self.headers)


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    422: "unprocessable",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class Router:
    """`/api/v1/jobs/{job_id}`-style patterns; 404 for unknown paths, 405 with Allow for methods."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        for existing, methods in self._routes:
            if existing.pattern == regex.pattern:
                methods[method] = handler
                return
        self._routes.append((regex, {method: handler}))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for regex, methods in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if handler is None:
                allow = ", ".join(sorted(methods))
                raise HttpError(405, f"{method} is not allowed on {path}", headers=[("Allow", allow)])
            return handler, {k: unquote(v) for k, v in m.groupdict().items()}
        raise HttpError(404, f"no such endpoint: {path}")
