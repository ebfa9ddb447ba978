"""The wire protocol as pure functions: bytes in, envelopes or refusals out, bytes back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from printd import protocol as P
from printd.protocol import Envelope, FrameError, JobReport, StatusUpdate


def frame(obj: Any) -> bytes:
    return orjson.dumps(obj)


# ------------------------------------------------------------------ parse_frame


@pytest.mark.parametrize(
    "payload",
    [
        frame({"event": "ping", "id": 3, "data": {"x": 1}}),
        frame({"event": "ping", "id": 3, "data": {"x": 1}}).decode(),
    ],
)
def test_a_frame_parses_into_an_envelope_from_bytes_or_text(payload: bytes | str) -> None:
    assert P.parse_frame(payload) == Envelope("ping", {"x": 1}, 3)


def test_id_and_data_are_optional() -> None:
    assert P.parse_frame(b'{"event":"ping"}') == Envelope("ping", {}, None)
    assert P.parse_frame(memoryview(b'{"event":"ping","id":null}')) == Envelope("ping", {}, None)


@pytest.mark.parametrize(
    ("payload", "code", "message", "msg_id"),
    [
        (b"{not json", P.ERR_BAD_JSON, "frame is not valid JSON", None),
        (b"\xff\xfe", P.ERR_BAD_JSON, "frame is not valid JSON", None),
        (b"[1, 2]", P.ERR_BAD_ENVELOPE, "frame must be a JSON object", None),
        (b'"ping"', P.ERR_BAD_ENVELOPE, "frame must be a JSON object", None),
        (b'{"event":"ping","id":"7"}', P.ERR_BAD_ENVELOPE, "'id' must be an integer", None),
        (b'{"event":"ping","id":1.5}', P.ERR_BAD_ENVELOPE, "'id' must be an integer", None),
        (b'{"event":"ping","id":true}', P.ERR_BAD_ENVELOPE, "'id' must be an integer", None),
        (b'{"id":4}', P.ERR_BAD_ENVELOPE, "'event' must be a non-empty string", 4),
        (b'{"event":"","id":4}', P.ERR_BAD_ENVELOPE, "'event' must be a non-empty string", 4),
        (b'{"event":7,"id":4}', P.ERR_BAD_ENVELOPE, "'event' must be a non-empty string", 4),
        (b'{"event":"ping","id":5,"data":[1]}', P.ERR_BAD_ENVELOPE, "'data' must be a JSON object", 5),
        (b'{"event":"ping","id":5,"data":null}', P.ERR_BAD_ENVELOPE, "'data' must be a JSON object", 5),
    ],
)
def test_every_envelope_refusal_says_why_and_keeps_the_id_once_it_is_known(
    payload: bytes, code: str, message: str, msg_id: int | None
) -> None:
    assert P.parse_frame(payload) == FrameError(code, message, msg_id)


def test_utf8_is_told_apart_only_when_asked() -> None:
    assert P.is_utf8("ticket für Tisch 4".encode())
    assert P.is_utf8(memoryview(b"{}"))
    assert not P.is_utf8(b'{"event":"\xff"}')


# ------------------------------------------------------------------ parse_status


def status(data: dict[str, Any], msg_id: int | None = 2) -> Envelope:
    return Envelope("printer.status", data, msg_id)


def test_a_status_update_keeps_its_data() -> None:
    data = {"printer_id": "kitchen-1", "status": "paper_low", "paper": 12}
    assert P.parse_status(status(data)) == StatusUpdate("kitchen-1", "paper_low", data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"status": "online"}, "'printer_id' must be 1-128 characters"),
        ({"printer_id": "", "status": "online"}, "'printer_id' must be 1-128 characters"),
        ({"printer_id": "a:b", "status": "online"}, "'printer_id' must be 1-128 characters"),
        ({"printer_id": "x" * 129, "status": "online"}, "'printer_id' must be 1-128 characters"),
        ({"printer_id": 7, "status": "online"}, "'printer_id' must be 1-128 characters"),
        ({"printer_id": "p1"}, "'status' must be a string of 1-64 characters"),
        ({"printer_id": "p1", "status": ""}, "'status' must be a string of 1-64 characters"),
        ({"printer_id": "p1", "status": "x" * 65}, "'status' must be a string of 1-64 characters"),
        ({"printer_id": "p1", "status": 1}, "'status' must be a string of 1-64 characters"),
        ({"printer_id": "p1", "status": "online", "note": "a\x00b"}, "text must not contain NUL"),
        ({"printer_id": "p1", "status": "online", "x": [{"k\x00": 1}]}, "text must not contain NUL"),
    ],
)
def test_every_status_refusal_is_invalid_data_with_the_frame_id(data: dict[str, Any], message: str) -> None:
    err = P.parse_status(status(data, msg_id=9))
    assert isinstance(err, FrameError)
    assert err.code == P.ERR_INVALID_DATA and err.id == 9 and err.message.startswith(message)


def test_a_status_of_exactly_64_characters_is_accepted() -> None:
    assert isinstance(P.parse_status(status({"printer_id": "p1", "status": "s" * 64})), StatusUpdate)


# ------------------------------------------------------------------ parse_job_report


def report(event: str, data: dict[str, Any], msg_id: int | None = 3) -> Envelope:
    return Envelope(event, data, msg_id)


def test_an_ack_has_no_success_and_a_result_has_one() -> None:
    ack = P.parse_job_report(report("job.ack", {"job_id": "j1", "correlation_id": "c1"}))
    assert ack == JobReport("j1", "c1", None, None, {"job_id": "j1", "correlation_id": "c1"})
    data = {"job_id": "j1", "success": False, "message": "paper jam"}
    assert P.parse_job_report(report("job.result", data)) == JobReport("j1", None, False, "paper jam", data)


@pytest.mark.parametrize(
    ("event", "data", "message"),
    [
        ("job.ack", {}, "'job_id' must be 1-128 characters"),
        ("job.ack", {"job_id": "j 1"}, "'job_id' must be 1-128 characters"),
        ("job.ack", {"job_id": "j1", "correlation_id": "c/1"}, "'correlation_id' must be 1-128 characters"),
        ("job.ack", {"job_id": "j1", "correlation_id": 5}, "'correlation_id' must be 1-128 characters"),
        ("job.result", {"job_id": "j1", "success": True, "message": "a\x00"}, "text must not contain NUL"),
        ("job.result", {"job_id": "j1", "success": True, "message": 3}, "'message' must be a string"),
        ("job.ack", {"job_id": "j1", "message": ["x"]}, "'message' must be a string"),
        ("job.result", {"job_id": "j1"}, "'success' must be true or false"),
        ("job.result", {"job_id": "j1", "success": 1}, "'success' must be true or false"),
        ("job.result", {"job_id": "j1", "success": "true"}, "'success' must be true or false"),
    ],
)
def test_every_report_refusal_is_invalid_data_with_the_frame_id(
    event: str, data: dict[str, Any], message: str
) -> None:
    err = P.parse_job_report(report(event, data, msg_id=11))
    assert isinstance(err, FrameError)
    assert err.code == P.ERR_INVALID_DATA and err.id == 11 and err.message.startswith(message)


# ------------------------------------------------------------------ encoding


def test_encode_event_with_and_without_an_id() -> None:
    assert orjson.loads(P.encode_event("hello", {"protocol": 1})) == {
        "event": "hello",
        "data": {"protocol": 1},
    }
    assert orjson.loads(P.encode_event("job.dispatch", {"job_id": "j1"}, 4)) == {
        "event": "job.dispatch",
        "id": 4,
        "data": {"job_id": "j1"},
    }


def test_encode_ack_answers_the_frame_id() -> None:
    assert orjson.loads(P.encode_ack(8)) == {"event": "ack", "id": 8, "data": {}}
    assert orjson.loads(P.encode_ack(8, {"ok": True})) == {"event": "ack", "id": 8, "data": {"ok": True}}


def test_encode_error_carries_code_message_and_the_id_when_known() -> None:
    assert orjson.loads(P.encode_error(FrameError(P.ERR_FORBIDDEN, "not yours", 6))) == {
        "event": "error",
        "id": 6,
        "data": {"code": "forbidden", "message": "not yours"},
    }
    assert orjson.loads(P.encode_error(FrameError(P.ERR_BAD_JSON, "frame is not valid JSON"))) == {
        "event": "error",
        "data": {"code": "bad_json", "message": "frame is not valid JSON"},
    }


def test_encode_batch_splices_items_without_re_encoding_them() -> None:
    items = [frame({"printer_id": "p1", "status": "online"}), frame({"printer_id": "p2", "status": "busy"})]
    plain = orjson.loads(P.encode_batch("printer.status.batch", items))
    assert plain == {
        "event": "printer.status.batch",
        "data": {
            "printers": [{"printer_id": "p1", "status": "online"}, {"printer_id": "p2", "status": "busy"}]
        },
    }
    stamped = orjson.loads(P.encode_batch("printer.status.batch", items, sent_at=1700000000.1234567))
    assert stamped["data"]["sent_at"] == pytest.approx(1700000000.123457)
    assert orjson.loads(P.encode_batch("printer.status.snapshot", [])) == {
        "event": "printer.status.snapshot",
        "data": {"printers": []},
    }


def test_what_a_parse_refuses_round_trips_as_the_error_event_the_client_reads() -> None:
    err = P.parse_frame(b'{"event":"job.ack","id":12,"data":"x"}')
    assert isinstance(err, FrameError)
    sent = orjson.loads(P.encode_error(err))
    assert sent["id"] == 12 and sent["data"]["code"] == "bad_envelope"


def test_budget_free_refusals_are_printd_outages_and_caps_only() -> None:
    assert P.BUDGET_FREE == {P.ERR_UNAVAILABLE, P.ERR_LIMIT_EXCEEDED}
    assert "ping" in P.AGENT_EVENTS and P.DASHBOARD_EVENTS == {"ping"}


# ------------------------------------------------------------------ the raw-bytes check (_plain)


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"printer_id": "p1", "status": "online", "note": "a\x00b"}, "text must not contain NUL"),
        ({"printer_id": "p1", "status": "online", "x": [{"k\x00": 1}]}, "text must not contain NUL"),
        ({"printer_id": "p1", "status": "online", "x": nested(70)}, "text nests deeper than 64"),
    ],
)
def test_nul_and_depth_are_refused_in_parsed_messages(data: dict[str, Any], message: str) -> None:
    env = P.parse_frame(frame({"event": "printer.status", "id": 4, "data": data}))
    assert isinstance(env, Envelope) and env.raw is not None and not P._plain(env.raw)
    err = P.parse_status(env)
    assert isinstance(err, FrameError) and err.message.startswith(message)


@pytest.mark.parametrize(
    "data",
    [
        {"printer_id": "p1", "status": "online", "queue": [{"job": i} for i in range(20)]},
        {"printer_id": "p1", "status": "online", "note": "\\u0000 is six characters, not NUL"},
        {"printer_id": "p1", "status": "online", "note": "{[" * 100, "x": nested(30)},
    ],
)
def test_messages_that_only_look_suspicious_are_accepted(data: dict[str, Any]) -> None:
    env = P.parse_frame(frame({"event": "printer.status", "id": 4, "data": data}))
    assert isinstance(env, Envelope)
    assert isinstance(P.parse_status(env), StatusUpdate)


def test_an_ordinary_status_skips_the_walk() -> None:
    env = P.parse_frame(frame({"event": "printer.status", "data": {"printer_id": "p1", "status": "ok"}}))
    assert isinstance(env, Envelope) and env.raw is not None and P._plain(env.raw)
