"""What every printctl command shares: where printd is, the token, output, exit codes.

Exit codes scripts can trust: 0 ok, 1 check failed (or printd unreachable), 2 usage/config error.
With `--json`, a failure also prints one error object on stdout (`error_object`), whatever the
command and wherever it failed, so a script reads stdout the same way in every case.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import orjson
import typer
from rich.console import Console

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


def json_requested() -> bool:
    return JSON_MODE.get()


def error_object(message: str, code: int, **fields: Any) -> dict[str, Any]:
    """The one shape of a failure under --json."""
    return {"ok": False, "error": message, "exit_code": code, **fields}


def fail(message: str, code: int = EXIT_CHECK_FAILED, **fields: Any) -> NoReturn:
    """Exit with `code`: the message on stderr, and with --json the error object (plus `fields`)
    on stdout."""
    if json_requested():
        emit_json(error_object(message, code, **fields))
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def emit_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


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
    """One HTTP call to printd; unreachable printd -> exit 1 with a clear message."""
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        return httpx.request(method, default_url(url) + path, json=json_body, headers=h, timeout=timeout)
    except httpx.HTTPError as exc:
        fail(f"cannot reach printd at {default_url(url)}: {exc}")


def get_json(url: str, path: str, *, timeout: float = 10.0) -> Any:
    """GET a monitoring endpoint: an error status exits 1 with the server's message, an answer
    that is not JSON exits 2 (the URL is probably not a printd)."""
    resp = request("GET", url, path, timeout=timeout)
    if resp.status_code != 200:
        fail(error_message(resp))
    try:
        return resp.json()
    except ValueError:
        fail(f"{default_url(url)} did not answer JSON: is --url a printd?", EXIT_USAGE)


def error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return f"HTTP {resp.status_code}: {body.get('message', body)}"
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
