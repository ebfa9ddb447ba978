"""What an id or a text from outside may contain, checked at every edge where one enters.

Ids (company, branch, sub, printer_id, job and correlation ids) are 1-128 characters of
letters, digits and `_ . @ -`. They are checked when a token is minted and verified, in API
paths and query parameters, and in agent frames, so nothing further in can meet another id.

`:` is deliberately not in that set: circuit names, rate-limit keys and bus topics join ids
with `:` (`dispatch:<company>:<branch>`), and with no `:` inside an id such a key splits back
into exactly one tuple of ids. Two tenants can therefore never share a key, and a prefix check
such as `dispatch:acme:` cannot match tenant `acme:eu`.

NUL is refused in any text (PostgreSQL cannot store it in `text` or `jsonb`; SQLite would
store it, so both backends refuse it alike).
"""

from __future__ import annotations

import re
from typing import Any

MAX_ID_LEN = 128
ID_CHARS = "letters, digits and _ . @ -"
ID_RULE = f"1-{MAX_ID_LEN} characters of {ID_CHARS}"
_ID_RE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


def is_id(value: object) -> bool:
    """True for a string that is a valid id (see the module docstring)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


#: How deep JSON that printd stores and writes back (job payloads, agents' status details and
#: results) may nest. orjson reads 1024 levels but writes at most 254, and the value sits a few
#: levels down in the frame that carries it; real tickets and statuses nest a handful.
MAX_JSON_DEPTH = 64


def json_problem(value: Any, subject: str) -> str | None:
    """Why printd must not store a JSON value it will write back (the message, about `subject`),
    or None: a NUL character in any string (keys included), or nesting deeper than
    MAX_JSON_DEPTH. One walk, iterative, so a deeply nested document (orjson accepts 1024
    levels) cannot exhaust the Python stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{subject} must not contain NUL characters"
        elif isinstance(item, dict | list):
            if depth == MAX_JSON_DEPTH:
                return f"{subject} nests deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


def dispatch_circuit_name(company: str, branch: str) -> str:
    """The name of a branch's dispatch circuit; unambiguous because ids hold no `:`."""
    return f"dispatch:{company}:{branch}"
