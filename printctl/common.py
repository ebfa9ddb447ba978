"""What every printctl command shares: where printd is, the token, output, exit codes.

Exit codes scripts can trust: 0 ok, 1 check failed (or printd unreachable), 2 usage/config error.
With `--json`, a failure also prints one error object on stdout (`error_object`), whatever the
command and wherever it failed, so a script reads stdout the same way in every case.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import quote

import orjson
import typer
from rich.console import Console

if TYPE_CHECKING:
    import httpx  # imported by `request`: commands that never call printd start without it

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

DEFAULT_URL = "http://127.0.0.1:3001"

console = Console()
err_console = Console(stderr=True)

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", envvar="PRINTD_URL", help="printd base URL (env PRINTD_URL).", show_default=DEFAULT_URL
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="PRINTD_TOKEN", help="Bearer token (env PRINTD_TOKEN).", show_default=False
    ),
]
MonitoringTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["PRINTD_TOKEN", "PRINTD_METRICS_TOKEN"],
        help="Admin token, or printd's metrics token (env PRINTD_TOKEN or PRINTD_METRICS_TOKEN).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for printd.")]


def default_url(url: str | None) -> str:
    return (url or os.environ.get("PRINTD_URL") or DEFAULT_URL).rstrip("/")


def path_segment(what: str, value: str) -> str:
    """`value` as one URL path segment. printd's router percent-decodes path parameters, so any
    id travels encoded (`/` `?` `#` `%` spaces included); only an empty one cannot be sent."""
    if not value:
        fail(f"{what}: must not be empty", EXIT_USAGE)
    encoded = quote(value, safe="")
    # "." and ".." would be dot-segments that clients and proxies collapse: encode the dots too.
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


#: Set by the root command (printctl.main) for the whole invocation: was --json given?
JSON_MODE: ContextVar[bool] = ContextVar("printctl_json_mode", default=False)


def error_object(message: str, code: int, **fields: Any) -> dict[str, Any]:
    """The one shape of a failure under --json."""
    return {"ok": False, "error": message, "exit_code": code, **fields}


def fail(message: str, code: int = EXIT_CHECK_FAILED, **fields: Any) -> NoReturn:
    """Exit with `code`: the message on stderr, and with --json the error object (plus `fields`)
    on stdout."""
    if JSON_MODE.get():
        emit_json(error_object(message, code, **fields))
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # one line, unwrapped
    raise typer.Exit(code)


def emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


#: A proxy's answers when printd behind it is down: printd did not answer, the URL may be right.
PROXY_ERRORS = (502, 503, 504)


def request(
    method: str,
    url: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """One HTTP call to printd. Unreachable printd (or a proxy's error page) exits 1; an answer
    that is not printd's JSON exits 2 in one line: --url points somewhere else."""
    import httpx

    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    base = default_url(url)
    try:
        resp = httpx.request(method, base + path, json=json_body, headers=h, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach printd at {base}: {exc}")
    check_printd_answer(resp, base)
    return resp


def check_printd_answer(resp: httpx.Response, base: str) -> None:
    """printd answers JSON objects, errors included; anything else is not printd speaking."""
    try:
        if isinstance(resp.json(), dict):
            return
    except ValueError:
        pass
    kind = resp.headers.get("content-type", "").partition(";")[0].strip() or "no content type"
    what = f"HTTP {resp.status_code}, {kind}"
    if resp.status_code in PROXY_ERRORS:
        fail(f"printd did not answer at {base}: a proxy in front of it said {what}")
    fail(f"{base} did not answer like printd ({what}): is --url a printd?", EXIT_USAGE)


def get_json(url: str, path: str, *, token: str | None = None, timeout: float = 10.0) -> Any:
    """GET a monitoring endpoint: an error status exits with the server's message."""
    resp = request("GET", url, path, token=token, timeout=timeout)
    if resp.status_code != 200:
        fail(error_message(resp), exit_code_for(resp))
    return resp.json()


#: printd refused the request itself or its credentials: fix the command or the token.
USAGE_STATUSES = frozenset({400, 401, 403, 405, 413, 422, 431})


def exit_code_for(resp: httpx.Response) -> int:
    """2 when printd refused what was asked (bad input, bad or missing token), 1 when the check
    failed (not found, conflict, rate limited, printd or a dependency unavailable)."""
    return EXIT_USAGE if resp.status_code in USAGE_STATUSES else EXIT_CHECK_FAILED


def error_message(resp: httpx.Response) -> str:
    """printd's error answer in one line: status and message."""
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    message = body.get("message", body) if isinstance(body, dict) else body
    return f"HTTP {resp.status_code}: {message}"
