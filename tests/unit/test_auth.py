"""Token checks: the direct HS256 verifier against PyJWT as the reference, and its refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt
import orjson
import pytest

from printd.auth import AuthError, TokenVerifier, bearer_token, mint_token, parse_ttl

SECRET = "unit-test-secret-0123456789abcdef0123456789"
NOW = 1_800_000_000.0


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


def verifier() -> TokenVerifier:
    return TokenVerifier(SECRET, leeway=30)


def refused(token: str, status: int = 401, now: float = NOW, **kw: object) -> str:
    with pytest.raises(AuthError) as exc:
        verifier().verify(token, now=now, **kw)  # type: ignore[arg-type]
    assert exc.value.status == status
    return exc.value.message


def test_valid_tokens_match_pyjwt() -> None:
    for role, branch in (("agent", "b1"), ("dashboard", None), ("service", None), ("admin", None)):
        tok = mint_token(SECRET, role=role, company="acme", sub="s-1", branch=branch, ttl=600, now=NOW)
        claims = verifier().verify(tok, now=NOW + 10)
        reference = jwt.decode(
            tok, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
        )
        assert (claims.sub, claims.role, claims.company, claims.branch) == (
            reference["sub"],
            reference["role"],
            reference["company"],
            reference.get("branch"),
        )
        assert claims.exp == reference["exp"]


def test_expiry_with_leeway() -> None:
    tok = mint_token(SECRET, role="service", company="acme", sub="s", ttl=60, now=NOW)
    assert verifier().verify(tok, now=NOW + 60 + 29).sub == "s"  # within the 30 s leeway
    assert refused(tok, now=NOW + 60 + 31) == "token expired"


def test_not_before_is_honoured() -> None:
    tok = jwt.encode(
        {"sub": "s", "role": "service", "company": "a", "exp": NOW + 600, "nbf": NOW + 300}, SECRET
    )
    assert refused(tok) == "token not yet valid"
    assert verifier().verify(tok, now=NOW + 290).sub == "s"
    future = mint_token(SECRET, role="service", company="acme", sub="s", now=NOW + 3600)  # iat in an hour
    assert refused(future) == "token not yet valid"


def test_wrong_key_tampering_and_garbage_are_refused() -> None:
    tok = mint_token(SECRET, role="service", company="acme", sub="s", now=NOW)
    other = mint_token(
        "another-secret-0123456789abcdef0123456789", role="service", company="acme", sub="s", now=NOW
    )
    assert refused(other) == "invalid token"
    header, payload, sig = tok.split(".")
    forged = b64(
        {
            **jwt.decode(
                tok, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
            ),
            "company": "evil",
        }
    )
    assert refused(f"{header}.{forged}.{sig}") == "invalid token"
    assert refused(f"{header}.{payload}.{sig[:-2]}AA") == "invalid token"
    for junk in ("", "abc", "a.b", "a.b.c.d", f"{header}.{payload}", f"{header}.{payload}.{sig}=", "é.é.é"):
        assert refused(junk) == "invalid token"


def test_alg_none_and_other_algorithms_are_refused() -> None:
    claims = {"sub": "s", "role": "admin", "company": "*", "exp": NOW + 600}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert refused(unsigned) == "invalid token"
    hs512 = jwt.encode(claims, SECRET * 2, algorithm="HS512")  # 64+ bytes: no key-length warning
    assert refused(hs512) == "invalid token"


def test_a_header_is_checked_whatever_was_accepted_before() -> None:
    """The verifier remembers the last header it accepted; a different one, even signed with
    our key, is still checked (here it names another algorithm)."""
    v = verifier()
    claims = {"sub": "s", "role": "agent", "company": "acme", "branch": "b", "exp": NOW + 600}
    good = jwt.encode(claims, SECRET, algorithm="HS256")
    assert v.verify(good, now=NOW).sub == "s"
    signing_input = f"{b64({'alg': 'HS512', 'typ': 'JWT'})}.{b64(claims)}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    other = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(AuthError) as exc:
        v.verify(other, now=NOW)
    assert exc.value.message == "invalid token"
    assert v.verify(good, now=NOW).sub == "s"


def test_claims_are_checked() -> None:
    no_exp = jwt.encode({"sub": "s", "role": "service", "company": "a"}, SECRET)
    assert "'exp'" in refused(no_exp)
    bad_role = jwt.encode({"sub": "s", "role": "root", "company": "a", "exp": NOW + 60}, SECRET)
    assert refused(bad_role) == "invalid token claims"
    agent_without_branch = jwt.encode({"sub": "s", "role": "agent", "company": "a", "exp": NOW + 60}, SECRET)
    assert "branch" in refused(agent_without_branch)
    string_exp = jwt.encode({"sub": "s", "role": "service", "company": "a", "exp": "tomorrow"}, SECRET)
    assert refused(string_exp) == "invalid token claims"
    dash = mint_token(SECRET, role="dashboard", company="acme", sub="d", now=NOW)
    assert "role 'dashboard'" in refused(dash, status=403, roles=("service", "admin"))


def test_bearer_header_and_query() -> None:
    assert bearer_token("Bearer abc", None) == "abc"
    assert bearer_token(None, "q", query_allowed=True) == "q"
    with pytest.raises(AuthError, match="Authorization"):
        bearer_token(None, "q")  # the API takes the header only
    with pytest.raises(AuthError):
        bearer_token("Basic abc", None)


def test_mint_refuses_bad_input_and_ttl_parses() -> None:
    with pytest.raises(ValueError, match="branch"):
        mint_token(SECRET, role="agent", company="a", sub="s")
    with pytest.raises(ValueError, match="role"):
        mint_token(SECRET, role="root", company="a", sub="s")
    with pytest.raises(ValueError, match="admin"):
        mint_token(SECRET, role="service", company="*", sub="s")
    assert parse_ttl("90") == 90 and parse_ttl("15m") == 900 and parse_ttl("2d") == 172800
    with pytest.raises(ValueError):
        parse_ttl("soon")


@pytest.mark.parametrize("field", ["company", "branch", "sub"])
@pytest.mark.parametrize("value", ["acme:eu", "a b", "a\x00b", "é", "x" * 129, ""])
def test_ids_outside_the_charset_are_refused_at_minting_and_verification(field: str, value: str) -> None:
    """`:` would let `acme` and `acme:eu` build equal circuit and rate-limit keys."""
    claims: dict[str, str] = {"role": "agent", "company": "acme", "branch": "b1", "sub": "s", field: value}
    with pytest.raises(ValueError):
        mint_token(SECRET, **claims)  # type: ignore[arg-type]
    signed_elsewhere = jwt.encode({**claims, "exp": NOW + 600}, SECRET)
    assert "ids must be" in refused(signed_elsewhere)


def test_only_admin_tokens_may_be_for_all_companies() -> None:
    for role in ("service", "dashboard", "agent"):
        tok = jwt.encode({"sub": "s", "role": role, "company": "*", "branch": "b", "exp": NOW + 60}, SECRET)
        assert "admin tokens only" in refused(tok, status=403)
    admin = jwt.encode({"sub": "s", "role": "admin", "company": "*", "exp": NOW + 60}, SECRET)
    assert verifier().verify(admin, now=NOW).company == "*"
