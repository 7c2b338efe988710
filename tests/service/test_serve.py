"""`loyaltylens serve` as a client sees it: the real uvicorn server, the real plugins,
httpx on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import UNCAPPED

pytestmark = pytest.mark.slow

KEY = "app-key-0123456789abcdef"


def comparable(result: dict) -> dict:
    """A result without what differs between two runs of the same customer."""
    return {k: v for k, v in result.items() if k not in ("run_id", "created_at", "latency_ms")}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# --- endpoints ---------------------------------------------------------------------------


def test_one_offer_is_what_run_json_prints(server, built_cli):
    reply = httpx.get(server.url + "/v1/offers/C002")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    cli_result = json.loads(built_cli("run", "C002", "--json", extra_env=UNCAPPED).stdout)
    assert comparable(reply.json()) == comparable(cli_result)
    assert set(reply.json()["latency_ms"]) == {"feature_store", "propensity", "retriever", "decision", "generator", "total"}


def test_as_of_reads_point_in_time_features(server):
    latest = httpx.get(server.url + "/v1/offers/C003").json()
    earlier = httpx.get(server.url + "/v1/offers/C003", params={"as_of": "2026-04-15"}).json()
    assert earlier["features"]["as_of"] < latest["features"]["as_of"]
    bad = httpx.get(server.url + "/v1/offers/C003", params={"as_of": "last tuesday"})
    assert bad.status_code == 422 and "as_of" in bad.json()["error"]


def test_the_hot_get_and_the_routed_get_answer_alike(server):
    """GET /v1/offers/{id} without a query is answered before FastAPI's router; with one
    (here as_of = the latest snapshot, which changes nothing) it takes the FastAPI route."""
    hot = httpx.get(server.url + "/v1/offers/C004")
    routed = httpx.get(server.url + "/v1/offers/C004", params={"as_of": hot.json()["features"]["as_of"]})
    assert hot.status_code == routed.status_code == 200
    assert hot.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert comparable(hot.json()) == comparable(routed.json())
    for path in ("/v1/offers/C999999", "/v1/offers/C001%0A"):
        hot, routed = httpx.get(server.url + path), httpx.get(server.url + path, params={"as_of": "2026-06-29"})
        assert (hot.status_code, hot.json()) == (routed.status_code, routed.json())
    assert httpx.get(server.url + "/v1/offers/C004/").status_code == 404  # a trailing slash is no id
    assert httpx.head(server.url + "/v1/offers/C004").status_code == 405


def test_unknown_and_malformed_ids_are_404_and_400_with_the_cli_message(server):
    unknown = httpx.get(server.url + "/v1/offers/C999999")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "customer 'C999999' not found",
                              "hint": "the feature store holds 1000 customers (demo ids C001 to C1000)"}
    malformed = httpx.get(server.url + "/v1/offers/C001;drop")
    assert malformed.status_code == 400 and "is malformed" in malformed.json()["error"]


def test_many_offers_in_order_with_error_entries(server):
    ids = ["C005", "not ok!", "C999999", "C001", "C005"]
    reply = httpx.post(server.url + "/v1/offers", json={"customer_ids": ids})
    assert reply.status_code == 200
    entries = reply.json()["results"]
    assert [e["customer_id"] for e in entries] == ids
    assert [e["ok"] for e in entries] == [True, False, False, True, True]
    assert entries[1]["status"] == 400 and "malformed" in entries[1]["error"]
    assert entries[2]["status"] == 404 and entries[2]["error"] == "customer 'C999999' not found"
    single = httpx.get(server.url + "/v1/offers/C001").json()
    assert comparable(entries[3]["result"]) == comparable(single)


def test_batch_limit_and_bad_bodies(server):
    over = httpx.post(server.url + "/v1/offers", json={"customer_ids": [f"C{i:03d}" for i in range(1, 1002)]})
    assert over.status_code == 413 and "over the limit of 1000" in over.json()["error"]
    assert httpx.post(server.url + "/v1/offers", json={"ids": ["C001"]}).status_code == 422
    assert httpx.post(server.url + "/v1/offers", json={"customer_ids": []}).status_code == 422  # minItems 1
    broken = httpx.post(server.url + "/v1/offers", content=b"{not json", headers={"content-type": "application/json"})
    # Unparsable is a 400 (malformed), as on every route; a body that parses but fails the schema is a 422.
    assert broken.status_code == 400 and broken.json()["error"] == "body is not JSON"


REFERENCE_ROW = {"recency_days": 3, "frequency_30d": 4, "monetary_90d": 320.5, "offer_redemption_rate": 0.4,
                 "channel_preference": "mobile", "engagement_score": 0.7}


def test_score_speaks_the_endpoint_contract(server):
    tiers = ["bronze", "silver", "gold", "platinum"]
    per_tier = httpx.post(server.url + "/v1/score",
                          json={"instances": [dict(REFERENCE_ROW, tier=t) for t in tiers]}).json()["predictions"]
    assert len(per_tier) == 4 and all(p["model_version"].startswith("propensity_v") for p in per_tier)
    # A reference client sends six features and no tier: the mean over tiers.
    single = httpx.post(server.url + "/v1/score", json=REFERENCE_ROW).json()
    assert single["propensity_score"] == pytest.approx(sum(p["propensity_score"] for p in per_tier) / 4, abs=1e-9)
    bare = httpx.post(server.url + "/v1/score", json=[REFERENCE_ROW, dict(REFERENCE_ROW, tier="gold")])
    assert bare.status_code == 200 and len(bare.json()["predictions"]) == 2
    missing = httpx.post(server.url + "/v1/score", json={k: v for k, v in REFERENCE_ROW.items() if k != "monetary_90d"})
    assert missing.status_code == 400 and missing.json()["error"] == "feature 'monetary_90d' is missing"
    wrong = httpx.post(server.url + "/v1/score", json=dict(REFERENCE_ROW, tier="diamond"))
    assert wrong.status_code == 400 and "must be one of" in wrong.json()["error"]


def test_health_readiness_plugins_config_and_openapi(server):
    assert httpx.get(server.url + "/healthz").json()["status"] == "alive"
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "workers": 1}
    plugins = httpx.get(server.url + "/v1/plugins").json()
    assert plugins["retriever"]["name"] == "duckdb" and plugins["generator"]["name"] == "template"
    config = httpx.get(server.url + "/v1/config").json()
    assert config["stages"]["feature_store"]["plugin"] == "duckdb"
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/offers/{customer_id}", "/v1/offers", "/v1/score", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    example = schema["paths"]["/v1/offers/{customer_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert example["example"]["customer_id"] == "C001"
    assert httpx.get(server.url + "/docs").status_code == 200


def test_concurrent_requests_answer_exactly_what_sequential_ones_do(server):
    ids = [f"C{i:03d}" for i in range(100, 160)]
    with httpx.Client(base_url=server.url) as client:
        sequential = {c: comparable(client.get(f"/v1/offers/{c}").json()) for c in ids}
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda c: httpx.get(f"{server.url}/v1/offers/{c}").json(), ids * 3))
    assert all(comparable(r) == sequential[r["customer_id"]] for r in concurrent)


def test_metrics_count_requests_stages_and_plugins(server):
    before = samples(httpx.get(server.url + "/metrics").text)
    key = ("loyaltylens_requests_total", (("method", "GET"), ("route", "/v1/offers/{customer_id}"), ("status", "200")))
    for customer in ("C010", "C011", "C012"):
        httpx.get(f"{server.url}/v1/offers/{customer}")
    httpx.get(f"{server.url}/v1/offers/C999999")
    after = samples(httpx.get(server.url + "/metrics").text)
    assert after[key] - before.get(key, 0) == 3
    missing = ("loyaltylens_requests_total", (("method", "GET"), ("route", "/v1/offers/{customer_id}"), ("status", "404")))
    assert after[missing] - before.get(missing, 0) == 1
    assert after[("loyaltylens_stage_seconds_count", (("stage", "retriever"),))] >= 3
    scored = [(dict(labels), value - before.get((name, labels), 0)) for (name, labels), value in after.items()
              if name == "loyaltylens_propensity_scored_total"]
    # One model for everybody here: every answer counted under segment "global".
    assert sum(n for labels, n in scored if labels["segment"] == "global") == 3
    info = [labels for (name, labels), _ in after.items() if name == "loyaltylens_build_info"]
    assert info and dict(info[0])["model_version"].startswith("propensity_v")


def test_audit_log_has_one_line_per_served_offer_and_no_secrets(server, built_cli):
    audit = built_cli.data_dir / "audit" / "audit.jsonl"
    before = audit.read_text().splitlines() if audit.exists() else []
    httpx.get(server.url + "/v1/offers/C020")
    httpx.post(server.url + "/v1/offers", json={"customer_ids": ["C021", "C999999", "C022"]})
    lines = [json.loads(line) for line in audit.read_text().splitlines()[len(before):]]
    assert [line["customer_id"] for line in lines] == ["C020", "C021", "C022"]
    assert {"time", "key", "offer_id", "model_version", "segment", "experiments", "prompt_version", "fallbacks",
            "latency_ms", "run_id"} <= set(lines[0])
    assert lines[0]["segment"] is None  # one model for everybody


# --- the gateway part ----------------------------------------------------------------------


def test_api_keys(start_server):
    running = start_server(env={"LOYALTYLENS_API_KEYS": f"app:{KEY},crm:other-key-0123456789"})
    assert httpx.get(running.url + "/v1/offers/C001").status_code == 401
    wrong = httpx.get(running.url + "/v1/offers/C001", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    right = httpx.get(running.url + "/v1/offers/C001", headers={"Authorization": f"Bearer {KEY}"})
    assert right.status_code == 200
    assert httpx.get(running.url + "/healthz").status_code == 200  # probes stay open
    assert httpx.get(running.url + "/readyz").status_code == 200
    assert KEY not in running.log_text()


def test_short_or_malformed_keys_stop_the_server_with_one_line(built_cli, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\napp:tooshort\n")
    proc = built_cli("serve", "--port", "0", "--api-keys-file", str(keys))
    assert proc.returncode == 2 and "tooshort" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: API key 'app' at {keys}:2 is shorter than 16 characters. use a long random key"]


def test_body_limits_stalled_clients_and_bad_content_length(start_server, tmp_path):
    config = tmp_path / "loyaltylens.toml"
    config.write_text("[serve]\nmax_body_bytes = 2048\nbody_timeout_s = 1.0\n")
    running = start_server(config=str(config))
    big = httpx.post(running.url + "/v1/offers", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert big.status_code == 413
    port = int(running.url.rsplit(":", 1)[1])

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            return sock.recv(4096)

    assert raw(b"POST /v1/offers HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").startswith(b"HTTP/1.1 400")
    started = time.monotonic()
    stalled: dict[str, bytes] = {}
    thread = threading.Thread(target=lambda: stalled.update(reply=raw(
        b"POST /v1/offers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"cust")))
    thread.start()
    time.sleep(0.2)
    assert httpx.get(running.url + "/v1/offers/C001").status_code == 200  # served meanwhile
    thread.join(15)
    assert stalled["reply"].startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 8


def test_readiness_is_503_until_the_pipeline_is_warm(start_server, tmp_path):
    config = tmp_path / "loyaltylens.toml"
    config.write_text("[serve]\nwarmup_runs = 20000\n")
    running = start_server(config=str(config), ready=False)
    seen, early = [], []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(running.url + "/readyz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        seen.append(reply.status_code)
        if reply.status_code == 200:
            break
        assert httpx.get(running.url + "/healthz").status_code == 200
        early.append(httpx.get(running.url + "/v1/offers/C001"))
        time.sleep(0.05)
    assert 503 in seen and seen[-1] == 200
    refused = [r for r in early if r.status_code == 503]  # the last one may have found it ready
    assert refused and all(r.headers["retry-after"] == "1" and r.json()["error"] == "warming up" for r in refused)
    assert httpx.get(running.url + "/v1/offers/C001").status_code == 200


def test_an_unknown_plugin_stops_serve_before_it_starts(built_cli):
    proc = built_cli("--use", "retriever=nosuch", "serve", "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no retriever plugin named 'nosuch'")


def test_sigterm_during_load_loses_no_request_and_no_audit_line(start_server, built_cli):
    running = start_server()
    audit = built_cli.data_dir / "audit" / "audit.jsonl"
    before = len(audit.read_text().splitlines()) if audit.exists() else 0
    outcomes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    outcomes.append(client.get(f"/v1/offers/C{(i % 900) + 1:03d}").status_code)
                except httpx.HTTPError:
                    outcomes.append(-1)  # refused after shutdown began: never sent, not lost
                    return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert running.stop() == 0
    stop.set()
    for t in threads:
        t.join(10)
    served = outcomes.count(200)
    assert served > 20 and set(outcomes) <= {200, -1}
    after = len(audit.read_text().splitlines())
    assert after - before == served


def test_a_killed_worker_is_replaced_without_a_503(start_server):
    """kill -9 of one of two workers: uvicorn starts a replacement, which warms before it
    accepts connections, so requests meanwhile go to the live worker (none answers 503),
    and /readyz says 503 only while the service is a worker short."""
    import os
    import signal as signals

    running = start_server("--workers", "2")
    pids = set()
    while len(pids) < 2:
        pids.add(httpx.get(running.url + "/healthz", headers={"connection": "close"}).json()["pid"])
    victim = pids.pop()
    os.kill(victim, signals.SIGKILL)
    statuses, ready, seen = [], [], set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            statuses.append(httpx.get(running.url + "/v1/offers/C001", headers={"connection": "close"}).status_code)
            ready.append(httpx.get(running.url + "/readyz", headers={"connection": "close"}).status_code)
            seen.add(httpx.get(running.url + "/healthz", headers={"connection": "close"}).json()["pid"])
        except httpx.TransportError:  # a connection the dead worker had accepted
            continue
        if len(seen - {victim}) >= 2 and ready[-1] == 200:
            break
    assert len(seen - {victim}) >= 2, "no replacement worker answered within 120 s"
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert victim not in seen


def test_two_workers_share_the_data_dir_and_metrics_add_up(start_server):
    running = start_server("--workers", "2")
    pids = set()
    with httpx.Client(base_url=running.url) as client:
        for i in range(60):
            assert client.get(f"/v1/offers/C{i + 1:03d}", headers={"connection": "close"}).status_code == 200
            pids.add(client.get("/healthz", headers={"connection": "close"}).json()["pid"])
        text = client.get("/metrics").text
    assert len(pids) == 2
    key = ("loyaltylens_requests_total", (("method", "GET"), ("route", "/v1/offers/{customer_id}"), ("status", "200")))
    assert samples(text)[key] == 60


# --- other plugins behind the service ------------------------------------------------------


def test_llm_requests_wait_concurrently_and_are_rate_limited(start_server, tmp_path):
    from loyaltylens_generator_openai.testing import StubOpenAIServer

    with StubOpenAIServer(latency_s=0.2) as stub:
        config = tmp_path / "loyaltylens.toml"
        config.write_text("[serve]\nllm_rate_per_s = 1000\nllm_burst = 1000\n")
        env = {"LOYALTYLENS_GENERATOR": "openai", "LOYALTYLENS_GENERATOR_OPENAI__BASE_URL": stub.base_url,
               "OPENAI_API_KEY": "sk-serve-marker"}
        running = start_server(config=str(config), env=env)
        ids = [f"C{i:03d}" for i in range(200, 264)]

        async def all_at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=running.url, timeout=30,
                                         limits=httpx.Limits(max_connections=100)) as client:
                return await asyncio.gather(*(client.get(f"/v1/offers/{c}") for c in ids))

        started = time.monotonic()
        replies = asyncio.run(all_at_once())
        elapsed = time.monotonic() - started
        assert all(r.status_code == 200 for r in replies)
        assert all(r.json()["copy"]["prompt_version"] == "openai-v1" for r in replies)
        assert elapsed < 64 * 0.2 / 8, elapsed  # sequential would take 12.8 s
        assert "sk-serve-marker" not in running.log_text()

        config.write_text("[serve]\nllm_rate_per_s = 0.5\nllm_burst = 2\n")
        limited = start_server(config=str(config), env={**env, "LOYALTYLENS_API_KEYS": f"app:{KEY}"})
        headers = {"Authorization": f"Bearer {KEY}"}
        codes = [httpx.get(f"{limited.url}/v1/offers/C00{i}", headers=headers, timeout=30) for i in range(1, 5)]
        assert [c.status_code for c in codes[:2]] == [200, 200]
        assert codes[2].status_code == 429 and int(codes[2].headers["retry-after"]) >= 1
        batch = httpx.post(f"{limited.url}/v1/offers", json={"customer_ids": ["C001"] * 5}, headers=headers)
        assert batch.status_code == 429


def test_weaviate_down_answers_from_the_fallback_and_says_so(start_server):
    from loyaltylens_retriever_weaviate.testing import free_port as weaviate_port

    port = weaviate_port()
    env = {"LOYALTYLENS_RETRIEVER": "weaviate", "LOYALTYLENS_RETRIEVER_WEAVIATE__URL": f"http://127.0.0.1:{port}",
           "LOYALTYLENS_RETRIEVER_WEAVIATE__GRPC_PORT": str(weaviate_port()),
           "LOYALTYLENS_RETRIEVER_WEAVIATE__FALLBACK": "duckdb",
           "LOYALTYLENS_RETRIEVER_WEAVIATE__TIMEOUT_S": "2"}
    running = start_server(env=env)
    reply = httpx.get(running.url + "/v1/offers/C001", timeout=60)
    assert reply.status_code == 200
    assert "retriever:weaviate_unreachable" in reply.json()["fallbacks"]


# --- closing the loop ----------------------------------------------------------------------


def _served_impressions(data_dir) -> list[dict]:
    from loyaltylens_feedback_duckdb.store import DuckDBFeedbackStore

    rows = DuckDBFeedbackStore(data_dir / "feedback").impressions_with_outcomes().to_pylist()
    return [r for r in rows if r["source"] == "serve"]


def test_two_workers_record_every_offer_they_hand_out_and_take_feedback(start_server, built_cli):
    before = {r["impression_id"] for r in _served_impressions(built_cli.data_dir)}
    running = start_server("--workers", "2")
    time.sleep(1.5)
    assert {r["impression_id"] for r in _served_impressions(built_cli.data_dir)} == before  # warm-up is not handed out
    with httpx.Client(base_url=running.url) as client:
        run_ids = [client.get(f"/v1/offers/C{i:03d}", headers={"connection": "close"}).json()["run_id"]
                   for i in range(40, 50)]
        many = client.post("/v1/offers", json={"customer_ids": ["C051", "C052"]}).json()["results"]
        run_ids += [entry["result"]["run_id"] for entry in many]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            new = {r["impression_id"] for r in _served_impressions(built_cli.data_dir)} - before
            if new >= set(run_ids):
                break
            time.sleep(0.2)
        assert new == set(run_ids)  # each offer once, from whichever worker served it

        reply = client.post("/v1/feedback", json={"outcomes": [
            {"impression_id": run_ids[0], "event": "redeemed", "rating": 5},
            {"impression_id": run_ids[1], "event": "viewed", "time": "2026-06-01T10:00:00"}]})
        assert reply.status_code == 202 and reply.json() == {"accepted": 2}
        one = client.post("/v1/feedback", json={"impression_id": run_ids[2], "event": "clicked"})
        assert one.status_code == 202
        bad = client.post("/v1/feedback", json={"outcomes": [{"impression_id": run_ids[0], "event": "bought"}]})
        assert bad.status_code == 400 and "outcomes.0.event" in bad.json()["error"]
        assert client.post("/v1/feedback", content=b"{nope").status_code == 400
    rows = {r["impression_id"]: r for r in _served_impressions(built_cli.data_dir)}
    assert rows[run_ids[0]]["redeemed"] and rows[run_ids[0]]["rating"] == 5
    assert rows[run_ids[1]]["viewed"] and rows[run_ids[2]]["clicked"] and not rows[run_ids[3]]["viewed"]
