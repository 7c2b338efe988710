"""What a hostile client sends `loyaltylens serve`, and the 4xx it must get back: always
the documented ``{"error", "hint"}`` shape, never a 500, never a hang (issue #30)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from .test_serve import REFERENCE_ROW

pytestmark = pytest.mark.slow


def raw_exchange(url: str, request: bytes, timeout: float = 15) -> tuple[int, bytes, float]:
    """Send bytes as they are (httpx would fix what we want broken); return status, body, seconds."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, time.monotonic() - started


def assert_error_shape(status: int, body: bytes, expected: int) -> dict:
    assert status == expected, body[:300]
    payload = json.loads(body)
    assert set(payload) == {"error", "hint"} and payload["error"], payload
    return payload


@pytest.mark.parametrize("route", ["/v1/score", "/v1/feedback"])
def test_deeply_nested_json_is_a_400(server, route):
    with server.client() as c:
        reply = c.post(route, content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"})
    payload = assert_error_shape(reply.status_code, reply.content, 400)
    assert "nested too deeply" in payload["error"]


@pytest.mark.parametrize("route", ["/v1/score", "/v1/feedback"])
def test_a_body_that_is_not_utf8_is_a_400(server, route):
    with server.client() as c:
        reply = c.post(route, content=b'{"a": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert "UTF-8" in assert_error_shape(reply.status_code, reply.content, 400)["error"]


@pytest.mark.parametrize("feature, value", [
    ("recency_days", 10 ** 400), ("frequency_30d", 3.5), ("offer_redemption_rate", 2),
    ("engagement_score", 1.5), ("shoe_size", 42),
])
def test_score_values_the_contract_rejects_are_a_400_naming_the_feature(server, feature, value):
    with server.client() as c:
        reply = c.post("/v1/score", content=json.dumps({**REFERENCE_ROW, feature: value}).encode(),
                       headers={"content-type": "application/json"})
    assert feature in assert_error_shape(reply.status_code, reply.content, 400)["error"]


def test_a_time_that_overflows_in_utc_is_a_400(server):
    with server.client() as c:
        reply = c.post("/v1/feedback", json={"impression_id": "x", "event": "viewed",
                                             "time": "0001-01-01T00:00:00+14:00"})
    assert "time" in assert_error_shape(reply.status_code, reply.content, 400)["error"]


def test_a_customer_id_with_a_trailing_newline_is_malformed(server):
    with server.client() as c:
        for raw in ("C001%0A", "C001%0D"):
            reply = c.get(f"/v1/offers/{raw}")
            assert "malformed" in assert_error_shape(reply.status_code, reply.content, 400)["error"]


def test_no_redirect_reflects_the_host_header(server):
    with server.client(follow_redirects=False) as c:
        reply = c.get("/v1/offers/C001/", headers={"host": "evil.example"})
    assert reply.status_code == 404 and "evil.example" not in reply.headers.get("location", "")
    assert_error_shape(reply.status_code, reply.content, 404)


def test_framework_errors_have_the_documented_shape(server):
    with server.client() as c:
        assert_error_shape(*(lambda r: (r.status_code, r.content))(c.get("/nowhere")), 404)
        wrong = c.delete("/v1/offers/C001")
        assert_error_shape(wrong.status_code, wrong.content, 405)
        assert "GET" in wrong.headers["allow"]
        garbled = c.post("/v1/offers", content=b"{not json", headers={"content-type": "application/json"})
        assert_error_shape(garbled.status_code, garbled.content, 400)
        dated = c.get("/v1/offers/C001", params={"as_of": "0"})
        assert_error_shape(dated.status_code, dated.content, 422)


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"a" * 1_000_000 + b"\r\n",                        # one 1 MB header
    b"".join(b"X-H%d: v\r\n" % i for i in range(5000)),              # 5,000 fields
])
def test_oversized_request_heads_get_431(server, headers):
    status, body, _ = raw_exchange(server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert "header" in assert_error_shape(status, body, 431)["error"]
    with server.client() as c:  # and the worker is fine
        assert c.get("/healthz").status_code == 200


def test_a_declared_length_over_the_limit_is_refused_at_once(server):
    status, body, seconds = raw_exchange(
        server.url, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000000\r\n\r\n")
    assert_error_shape(status, body, 413)
    assert seconds < 5  # the body time-out is 10 s: it was not waited for


def test_the_schema_publishes_the_id_pattern_and_the_score_body(server):
    with server.client() as c:
        schema = c.get("/openapi.json").json()
    offer = schema["paths"]["/v1/offers/{customer_id}"]["get"]
    param = next(p for p in offer["parameters"] if p["name"] == "customer_id")
    assert param["schema"]["pattern"].startswith("^[A-Za-z0-9]")
    body = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {s["title"] for s in body["oneOf"]} == {"One row", "Instances", "Rows"}
    assert "text/plain" in next(iter(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]))
    assert offer["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")


def test_placements_are_the_schema_enum_and_any_other_name_is_a_400(server):
    """The schema lists the configured placements; an unknown or empty name (which used to
    mean the default) is a 400 on the single and the batch route alike, never a 200.
    Found by schemathesis (test_schema.py)."""
    with server.client() as c:
        schema = c.get("/openapi.json").json()
        query = next(p for p in schema["paths"]["/v1/offers/{customer_id}"]["get"]["parameters"]
                     if p["name"] == "placement")
        assert query["schema"]["anyOf"][0]["enum"] == ["default"]
        body = schema["components"]["schemas"]["OffersRequest"]["properties"]
        assert body["placement"]["anyOf"][0]["enum"] == ["default"]
        assert body["customer_ids"]["minItems"] == 1
        for name in ("", "nowhere"):
            r = c.get("/v1/offers/C001", params={"placement": name})
            assert_error_shape(r.status_code, r.content, 400)
            r = c.post("/v1/offers", json={"customer_ids": ["not a valid id!"], "placement": name})
            assert_error_shape(r.status_code, r.content, 400)
        r = c.post("/v1/offers", json={"customer_ids": []})  # a body the schema refuses: 422, as for any field
        assert "customer_ids" in assert_error_shape(r.status_code, r.content, 422)["error"]
        assert c.get("/v1/offers/C001", params={"placement": "default"}).status_code == 200


@pytest.mark.parametrize("name", ["campaign:gold-monthly", "campaign:gold-monthly@mine", "campaign:"])
def test_a_campaigns_own_placement_is_refused_on_the_offers_routes(server, name):
    """``campaign:NAME@RUN`` is what batch workers resolve; a client sending it would get the
    campaign's offers counted against its frequency rule under a run of its choosing."""
    with server.client() as c:
        for reply in (c.get("/v1/offers/C001", params={"placement": name}),
                      c.post("/v1/offers", json={"customer_ids": ["C001"], "placement": name})):
            body = assert_error_shape(reply.status_code, reply.content, 400)
            assert "campaign's own placement" in body["error"] and "/v1/campaigns/" in body["hint"]


@pytest.mark.parametrize("time", [-1088653, "1700000000", "2026-06-01"])
def test_a_feedback_time_is_an_iso_date_time_not_a_unix_time(server, time):
    """pydantic alone would read -1088653 or "1700000000" as seconds since 1970 (found by
    schemathesis); the schema says date-time."""
    with server.client() as c:
        reply = c.post("/v1/feedback", json={"impression_id": "x", "event": "viewed", "time": time})
    assert "time" in assert_error_shape(reply.status_code, reply.content, 400)["error"]


@pytest.mark.parametrize("value", [False, None, 7])
def test_score_fields_accepted_and_ignored_are_still_strings(server, value):
    with server.client() as c:
        reply = c.post("/v1/score", json={**REFERENCE_ROW, "customer_id": value})
    assert "customer_id" in assert_error_shape(reply.status_code, reply.content, 400)["error"]


def test_index_beside_a_running_service_says_why_it_cannot_write(server, built_cli):
    """DuckDB lets one process write a file or many read it, and serve reads it while it runs.
    `index` used to die at the end with `unexpected TransactionException` (the real error
    hidden by a failed cleanup). Now: nothing to do is a success, a rebuild is one clear
    line (exit 4) before any embedding, and the service keeps answering."""
    current = built_cli("index", "--json")
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout)["embedded"] == 0
    rebuild = built_cli("index", "--rebuild")
    assert rebuild.returncode == 4, rebuild.stderr
    (line,) = rebuild.stderr.strip().splitlines()
    assert "open in another process" in line and "serve" in line and "Exception" not in line
    with server.client() as c:
        assert c.get("/v1/offers/C001").status_code == 200
