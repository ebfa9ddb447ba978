"""Tokens: HS256 JWTs minted by printctl, checked by printd before any upgrade or API call.

The secret comes from config/`JWT_SECRET`; in development, when none is set, printd makes one
and keeps it in the data directory (mode 0600) so that `printctl token` on the same machine
mints tokens the daemon accepts. Production refuses to start without a real one (config.py).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from printd.config import Config

ROLES = ("agent", "dashboard", "service", "admin")
ALGORITHM = "HS256"
SECRET_FILE = "jwt_secret"
_TTL_RE = re.compile(r"^(\d+)([smhdw]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class AuthError(Exception):
    """A request's credentials are refused; `status` is 401 (who are you) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    role: str
    company: str
    branch: str | None
    exp: float

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_access_company(self, company: str) -> bool:
        """Admins with company "*" see every company; everybody else only their own."""
        return self.company == company or (self.is_admin and self.company == "*")


def parse_ttl(text: str) -> int:
    """'90', '15m', '12h', '1d', '2w' -> seconds."""
    m = _TTL_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"bad TTL {text!r}: use a number with an optional unit s, m, h, d or w (e.g. 1d)")
    return int(m.group(1)) * _TTL_UNITS[m.group(2)]


def mint_token(
    secret: str,
    *,
    role: str,
    company: str,
    sub: str,
    branch: str | None = None,
    ttl: int = 86400,
    now: float | None = None,
) -> str:
    """An HS256 token with the claims printd checks."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if role == "agent" and not branch:
        raise ValueError("an agent token needs --branch")
    for name, value in (("sub", sub), ("company", company), ("branch", branch)):
        if value is not None and not (_ID_RE.match(value) or (name == "company" and value == "*")):
            raise ValueError(f"bad {name} {value!r}: 1-128 characters of letters, digits and _ . : @ -")
    if company == "*" and role != "admin":
        raise ValueError("company '*' (all companies) is for admin tokens only")
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "role": role,
        "company": company,
        "iat": issued,
        "exp": issued + ttl,
    }
    if branch:
        payload["branch"] = branch
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


class TokenVerifier:
    """Checks signature, expiry and the claims' shape; caches nothing (tokens are cheap to check)."""

    def __init__(self, secret: str, *, leeway: float = 30.0) -> None:
        self._secret = secret
        self._leeway = leeway
        self._options: jwt.types.Options = {"require": ["exp", "sub", "role", "company"]}

    def verify(self, token: str, *, roles: tuple[str, ...] = ROLES) -> Claims:
        try:
            payload = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], leeway=self._leeway, options=self._options
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(401, f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthError(401, "invalid token") from None
        role = payload.get("role")
        company = payload.get("company")
        sub = payload.get("sub")
        branch = payload.get("branch")
        if role not in ROLES or not isinstance(company, str) or not isinstance(sub, str):
            raise AuthError(401, "invalid token claims")
        if role == "agent" and not isinstance(branch, str):
            raise AuthError(401, "agent token lacks the 'branch' claim")
        if role not in roles:
            raise AuthError(403, f"role {role!r} may not use this endpoint (allowed: {', '.join(roles)})")
        return Claims(sub=sub, role=role, company=company, branch=branch, exp=float(payload["exp"]))


def bearer_token(authorization: str | None, query_token: str | None, *, query_allowed: bool = False) -> str:
    """The token from `Authorization: Bearer ...` (or `?token=` where allowed); 401 when missing."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError(401, "Authorization header must be 'Bearer <token>'")
        return value.strip()
    if query_token and query_allowed:
        return query_token
    where = (
        "'Authorization: Bearer <token>' or ?token=" if query_allowed else "'Authorization: Bearer <token>'"
    )
    raise AuthError(401, f"missing token: send {where}")


def resolve_secret(config: Config, *, create: bool = True) -> tuple[str, str]:
    """(secret, where it came from). Generates and stores one in development when absent."""
    if config.auth.jwt_secret:
        return config.auth.jwt_secret, "config"
    path = Path(config.data_dir) / SECRET_FILE
    if path.exists():
        return path.read_text().strip(), str(path)
    if config.production:
        raise AuthError(401, "JWT_SECRET is not set; production mode needs it")
    if not create:
        raise FileNotFoundError(
            f"no JWT secret: set JWT_SECRET, or start `printd run` once to generate {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, str(path)
