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


def has_nul(value: Any) -> bool:
    """True when a NUL character appears in any string of a JSON value, keys included.

    Iterative, so a deeply nested document (orjson accepts 1024 levels) cannot exhaust the
    Python stack."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


#: How deep JSON that printd stores and writes back (job payloads, agents' status details and
#: results) may nest. orjson reads 1024 levels but writes at most 254, and the value sits a few
#: levels down in the frame that carries it; real tickets and statuses nest a handful.
MAX_JSON_DEPTH = 64


def nesting(value: Any) -> int:
    """How many objects and arrays deep a JSON value nests (a scalar is 0). Iterative, as
    `has_nul` is."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def dispatch_circuit_name(company: str, branch: str) -> str:
    """The name of a branch's dispatch circuit; unambiguous because ids hold no `:`."""
    return f"dispatch:{company}:{branch}"
