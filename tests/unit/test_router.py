"""Path routing for the JSON API and monitoring: patterns, 404, 405 with Allow, HEAD as GET,
percent-decoded parameters; and the request and error objects handlers see."""

from __future__ import annotations

import orjson
import pytest

from printd.http.router import Handler, HttpError, HttpRequest, HttpResponse, Router, json_response


def handler(name: str) -> Handler:
    async def handle(request: HttpRequest) -> HttpResponse:
        return json_response(200, {"handler": name, "params": request.params})

    handle.__name__ = name
    return handle


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add("GET", "/api/v1/jobs", handler("list_jobs"))
    r.add("POST", "/api/v1/jobs", handler("submit"))
    r.add("GET", "/api/v1/jobs/{job_id}", handler("get_job"))
    r.add("POST", "/api/v1/printers/{printer_id}/test", handler("test_printer"))
    r.add("POST", "/monitoring/circuits/{name}/{action}", handler("circuit_action"))
    return r


def resolved(router: Router, method: str, path: str) -> tuple[str, dict[str, str]]:
    fn, params = router.resolve(method, path)
    return fn.__name__, params


def test_methods_of_one_pattern_share_it(router: Router) -> None:
    assert resolved(router, "GET", "/api/v1/jobs") == ("list_jobs", {})
    assert resolved(router, "POST", "/api/v1/jobs") == ("submit", {})


def test_parameters_are_one_path_segment_each(router: Router) -> None:
    assert resolved(router, "GET", "/api/v1/jobs/j-42") == ("get_job", {"job_id": "j-42"})
    assert resolved(router, "POST", "/monitoring/circuits/store/reset") == (
        "circuit_action",
        {"name": "store", "action": "reset"},
    )
    with pytest.raises(HttpError) as info:
        router.resolve("GET", "/api/v1/jobs/a/b")  # a parameter never spans a slash
    assert info.value.status == 404


def test_parameters_are_percent_decoded(router: Router) -> None:
    # printctl encodes every id as one segment: a circuit name holds ':' and may hold '/'
    assert resolved(router, "POST", "/monitoring/circuits/dispatch%3Aacme%3Ab1/reset")[1] == {
        "name": "dispatch:acme:b1",
        "action": "reset",
    }
    assert resolved(router, "GET", "/api/v1/jobs/a%2Fb%20c")[1] == {"job_id": "a/b c"}
    assert resolved(router, "GET", "/api/v1/jobs/%2E%2E")[1] == {"job_id": ".."}


def test_an_unknown_path_is_404_naming_it(router: Router) -> None:
    with pytest.raises(HttpError) as info:
        router.resolve("GET", "/api/v2/jobs")
    assert info.value.status == 404 and info.value.message == "no such endpoint: /api/v2/jobs"
    with pytest.raises(HttpError):
        router.resolve("GET", "/api/v1/jobs/")  # an empty parameter is no match either


def test_a_known_path_with_another_method_is_405_with_allow(router: Router) -> None:
    with pytest.raises(HttpError) as info:
        router.resolve("DELETE", "/api/v1/jobs")
    err = info.value
    assert err.status == 405 and err.headers == [("Allow", "GET, POST")]
    assert err.message == "DELETE is not allowed on /api/v1/jobs"
    with pytest.raises(HttpError) as info:
        router.resolve("GET", "/api/v1/printers/p1/test")
    assert info.value.headers == [("Allow", "POST")]


def test_head_is_answered_by_get_where_there_is_one(router: Router) -> None:
    assert resolved(router, "HEAD", "/api/v1/jobs/j1") == ("get_job", {"job_id": "j1"})
    with pytest.raises(HttpError) as info:
        router.resolve("HEAD", "/api/v1/printers/p1/test")
    assert info.value.status == 405 and info.value.headers == [("Allow", "POST")]


def test_adding_a_method_again_replaces_its_handler() -> None:
    r = Router()
    r.add("GET", "/x", handler("old"))
    r.add("GET", "/x", handler("new"))
    assert resolved(r, "GET", "/x")[0] == "new"


def test_patterns_match_the_whole_path_only(router: Router) -> None:
    for path in ("/api/v1/jobsX", "/prefix/api/v1/jobs", "/api/v1/printers/p1/test/more"):
        with pytest.raises(HttpError) as info:
            router.resolve("POST", path)
        assert info.value.status == 404


async def test_handlers_receive_the_parameters(router: Router) -> None:
    fn, params = router.resolve("GET", "/api/v1/jobs/j7")
    request = HttpRequest("GET", "/api/v1/jobs/j7", "/api/v1/jobs/j7", {}, b"", "127.0.0.1", params)
    response = await fn(request)
    assert orjson.loads(response.body) == {"handler": "get_job", "params": {"job_id": "j7"}}


# ------------------------------------------------------------------ requests and errors


def request(body: bytes = b"", target: str = "/api/v1/jobs") -> HttpRequest:
    return HttpRequest("POST", target, target.partition("?")[0], {}, body, "127.0.0.1")


def test_query_keeps_the_last_value_of_a_repeated_key() -> None:
    assert request(target="/api/v1/jobs?state=queued&limit=5&state=printed").query == {
        "state": "printed",
        "limit": "5",
    }
    assert request().query == {}


def test_json_body_or_a_400_that_says_why() -> None:
    assert request(b'{"printer_id": "p1"}').json() == {"printer_id": "p1"}
    with pytest.raises(HttpError) as info:
        request().json()
    assert info.value.status == 400 and "empty" in info.value.message
    with pytest.raises(HttpError) as info:
        request(b"{nope").json()
    assert info.value.status == 400 and info.value.message.startswith("request body is not valid JSON")


def test_an_error_response_is_json_with_the_reason_its_headers_and_extra_fields() -> None:
    err = HttpError(
        503, "the database is unavailable", headers=[("Retry-After", "3")], extra={"circuit": "store"}
    )
    response = err.response()
    assert response.status == 503 and response.content_type == "application/json"
    assert response.headers == [("Retry-After", "3")]
    assert orjson.loads(response.body) == {
        "error": "unavailable",
        "message": "the database is unavailable",
        "circuit": "store",
    }
    assert orjson.loads(HttpError(418, "teapot").response().body)["error"] == "error"
