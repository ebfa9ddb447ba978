"""Tokens: HS256 JWTs minted by printctl, checked by printd before any upgrade or API call.

The secret comes from config/`JWT_SECRET`; in development, when none is set, printd makes one
and keeps it in the data directory (mode 0600) so that `printctl token` on the same machine
mints tokens the daemon accepts. Production refuses to start without a real one (config.py).
"""

from __future__ import annotations

import binascii
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson

from printd.config import GENERATE_SECRET, MIN_PRODUCTION_SECRET_LEN, Config, ConfigError
from printd.inputs import ID_RULE, is_id

ROLES = ("agent", "dashboard", "service", "admin")
ALGORITHM = "HS256"
SECRET_FILE = "jwt_secret"
_TTL_RE = re.compile(r"^(\d+)([smhdw]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
        if value is not None and not (is_id(value) or (name == "company" and value == "*")):
            raise ValueError(f"bad {name} {value!r}: use {ID_RULE}")
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
    """Checks an HS256 token's signature, expiry and claims.

    It runs on every upgrade and API call, so it verifies directly with `hmac` instead of going
    through PyJWT's general machinery (about 6x cheaper): the signature over the exact
    `header.payload` bytes, compared in constant time; strict base64url; `alg` pinned to HS256
    (no `none`, no key confusion); `exp` required, `nbf` and `iat` not in the future, all with
    `leeway`, as PyJWT does.
    PyJWT mints the tokens and is the reference this is tested against.
    """

    def __init__(self, secret: str, *, leeway: float = 30.0) -> None:
        self._key = secret.encode()
        self.leeway = leeway
        self._header_ok = b""  # the last header checked (and signed with our key): HS256

    def verify(self, token: str, *, roles: tuple[str, ...] = ROLES, now: float | None = None) -> Claims:
        payload = self._decode(token)
        t = time.time() if now is None else now
        for claim in ("exp", "sub", "role", "company"):
            if claim not in payload:
                raise AuthError(401, f"token lacks the {claim!r} claim")
        exp = payload["exp"]
        nbf = payload.get("nbf", 0)
        iat = payload.get("iat", 0)
        if not (_is_number(exp) and _is_number(nbf) and _is_number(iat)):
            raise AuthError(401, "invalid token claims")
        if exp + self.leeway <= t:
            raise AuthError(401, "token expired")
        if max(nbf, iat) - self.leeway > t:
            raise AuthError(401, "token not yet valid")
        role = payload.get("role")
        company = payload.get("company")
        sub = payload.get("sub")
        branch = payload.get("branch")
        if role not in ROLES or not isinstance(company, str) or not isinstance(sub, str):
            raise AuthError(401, "invalid token claims")
        if branch is not None and not isinstance(branch, str):
            raise AuthError(401, "invalid token claims")
        if role == "agent" and branch is None:
            raise AuthError(401, "agent token lacks the 'branch' claim")
        # the same id rules as at minting: a token signed elsewhere cannot smuggle in an id that
        # would make two tenants' circuit or rate-limit keys equal (see printd.inputs)
        if not is_id(sub) or not (is_id(company) or company == "*") or not (branch is None or is_id(branch)):
            raise AuthError(401, f"invalid token claims: ids must be {ID_RULE}")
        if company == "*" and role != "admin":
            raise AuthError(403, "company '*' (all companies) is for admin tokens only")
        if role not in roles:
            raise AuthError(403, f"role {role!r} may not use this endpoint (allowed: {', '.join(roles)})")
        return Claims(sub=sub, role=role, company=company, branch=branch, exp=float(exp))

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            signing_input, _, signature = token.encode("ascii").rpartition(b".")
            header_b64, _, payload_b64 = signing_input.partition(b".")
            if not header_b64 or not payload_b64 or b"." in payload_b64:
                raise ValueError("not three segments")
            expected = hmac.digest(self._key, signing_input, "sha256")
            if not hmac.compare_digest(expected, _b64url(signature)):
                raise ValueError("bad signature")
            if header_b64 != self._header_ok:  # one issuer's tokens share the same header bytes
                header = orjson.loads(_b64url(header_b64))
                if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
                    raise ValueError("algorithm is not HS256")
                self._header_ok = header_b64
            payload = orjson.loads(_b64url(payload_b64))
            if not isinstance(payload, dict):
                raise ValueError("payload is not an object")
            return payload
        except (ValueError, UnicodeError, binascii.Error):
            raise AuthError(401, "invalid token") from None


def _b64url(segment: bytes) -> bytes:
    """Strict base64url (RFC 7515): unpadded, the URL-safe alphabet only."""
    if b"=" in segment or b"+" in segment or b"/" in segment:
        raise ValueError("not base64url")
    padded = segment.translate(_URLSAFE) + b"=" * (-len(segment) % 4)
    return binascii.a2b_base64(padded, strict_mode=True)


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    """(secret, where it came from). Generates and stores one in development when absent.

    A secret file that is empty or short (truncated, hand-edited) is refused rather than used:
    every token signed with it could be forged by guessing.
    """
    if config.auth.jwt_secret:
        return config.auth.jwt_secret, "config"
    path = Path(config.data_dir) / SECRET_FILE
    if path.exists():
        value = path.read_text().strip()
        if len(value) < MIN_PRODUCTION_SECRET_LEN:
            raise ConfigError(
                f"the JWT secret file {path} is empty or shorter than {MIN_PRODUCTION_SECRET_LEN} "
                f"characters; delete it to have printd generate a new one, or {GENERATE_SECRET} "
                "and set JWT_SECRET"
            )
        return value, str(path)
    if config.production:
        raise AuthError(401, "JWT_SECRET is not set; production mode needs it")
    if not create:
        raise FileNotFoundError(
            f"no JWT secret: set JWT_SECRET, or start `printd run` once to generate {path}"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, str(path)
