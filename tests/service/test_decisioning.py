"""Decisioning through the real CLI and a real 2-worker `serve`: caps hold under concurrent
requests, across workers and a batch running at the same time, and across a restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import httpx
import pyarrow.parquet as pq
import pytest

from .conftest import launch

pytestmark = pytest.mark.slow

CATALOGUE = [
    # Fills placement "once": at most one per customer per day.
    {"offer_id": "ONCE", "title": "Double points today", "description": "Double loyalty points on your basket today.",
     "category": "points_multiplier", "min_propensity_threshold": 0.0, "placements": ["once"],
     "cap_per_customer": {"count": 1, "days": 1}},
    # Fills placement "total": fifty hand-outs across every customer, ever.
    {"offer_id": "TOTAL", "title": "Free coffee on us", "description": "A free coffee with your next visit.",
     "category": "free_item", "min_propensity_threshold": 0.0, "placements": ["total"], "cap_total": 50},
    # Retrieved for every placement, never eligible: the fallback offer of "total".
    {"offer_id": "SPARE", "title": "Thanks for shopping", "description": "Thank you for being a member.",
     "category": "seasonal", "min_propensity_threshold": 0.0, "placements": ["nowhere"]},
]

CONFIG = """
[placements.once]
k = 1
pool = 3

[placements.total]
k = 1
pool = 3
fallback_offer = "SPARE"
"""


@pytest.fixture(scope="module")
def capped(cli, tmp_path_factory):
    """The CLI on its own data dir, whose catalogue is CATALOGUE, built by a first run."""
    root = tmp_path_factory.mktemp("decisioning")
    (root / "offers.json").write_text(json.dumps(CATALOGUE))
    (root / "loyaltylens.toml").write_text(CONFIG)
    env = {**cli.env, "LOYALTYLENS_DATA_DIR": str(root / "data"),
           "LOYALTYLENS_RETRIEVER_DUCKDB__CATALOGUE": str(root / "offers.json"),
           "LOYALTYLENS_CONFIG": str(root / "loyaltylens.toml"), "LOYALTYLENS_DEMO_CUSTOMERS": "300"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "--quiet", *args], capture_output=True,
                              text=True, env=env, cwd=root, timeout=600)

    proc = run("run", "C001", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["decision"]["dropped"] == {"wrong_placement": 3}  # default fills from nowhere
    run.env, run.workdir, run.root = env, root, root  # type: ignore[attr-defined]
    return run


def offer_of(reply: dict) -> str | None:
    return reply["top_offer"]["offer_id"] if reply["top_offer"] else None


def test_run_twice_shows_the_cap(built, tmp_path):
    """The demo catalogue caps its win-back offers at one per customer per week."""
    env = {"LOYALTYLENS_DECISION_RULES__PATH": str(tmp_path / "counters.sqlite3")}
    first = json.loads(built("run", "C001", "--json", extra_env=env).stdout)
    second = json.loads(built("run", "C001", "--json", extra_env=env).stdout)
    assert "capped_customer" not in first["decision"]["dropped"]
    capped = [c["offer"]["offer_id"] for c in first["candidates"] if c["offer"].get("cap_per_customer")]
    assert capped, "C001's offers carry no cap: the demo catalogue changed"
    assert second["decision"]["dropped"]["capped_customer"] >= len(capped)
    assert not set(capped) & {c["offer"]["offer_id"] for c in second["candidates"]}
    panel = built("run", "C001", extra_env=env).stdout
    assert "capped_customer" in panel and "placement default" in panel


def test_an_unknown_placement_is_one_line_naming_the_known_ones(capped):
    proc = capped("run", "C001", "--placement", "banner")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: placement 'banner' is not configured. configured placements: default, once, total; "
        "add [placements.banner] to loyaltylens.toml"]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_cap_of_one_holds_under_64_concurrent_requests_on_two_workers(capped, store, tmp_path):
    """On Redis each worker awaits its decisions on the event loop (AsyncDecider), so the
    64 requests interleave within a worker too; the cap still holds exactly."""
    import contextlib

    from loyaltylens_core.sdk.standins import redis_server

    with contextlib.ExitStack() as stack:
        env = None
        if store == "redis":
            redis = stack.enter_context(redis_server())
            env = {"LOYALTYLENS_DECISION_RULES__COUNTER_STORE": "redis",
                   "LOYALTYLENS_DECISION_RULES__REDIS_URL": redis.url,
                   "LOYALTYLENS_DECISION_RULES__KEY_PREFIX": f"test-{tmp_path.name}:"}
        server = launch(capped, capped.root, "--workers", "2", env=env)
        stack.callback(server.stop)
        _one_of_64_gets_the_offer(server, "C007" if store == "sqlite" else "C008")


def _one_of_64_gets_the_offer(server, customer: str) -> None:
    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.get(f"/v1/offers/{customer}?placement=once") for _ in range(64)))

    replies = asyncio.run(all_at_once())
    assert all(r.status_code == 200 for r in replies)
    offers = [offer_of(r.json()) for r in replies]
    assert offers.count("ONCE") == 1 and offers.count(None) == 63
    refused = [r.json()["decision"]["dropped"] for r in replies if offer_of(r.json()) is None]
    assert all(d.get("capped_customer") == 1 for d in refused), [d for d in refused if d.get("capped_customer") != 1]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'loyaltylens_decision_dropped_total{placement="once",reason="capped_customer"} 63.0' in metrics


def test_cap_total_holds_across_two_workers_a_concurrent_batch_and_a_restart(capped):
    ids = capped.root / "ids.txt"
    ids.write_text("".join(f"C{i:03d}\n" for i in range(1, 201)))
    server = launch(capped, capped.root, "--workers", "2")
    try:
        served: list[str | None] = []
        errors: list[BaseException] = []

        def requests(start: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    for i in range(start, start + 40):
                        served.append(offer_of(client.get(f"/v1/offers/C{i:03d}?placement=total").json()))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=requests, args=(1 + 40 * n,)) for n in range(3)]
        for t in threads:
            t.start()
        batch = capped("batch", "--ids", str(ids), "--out", str(capped.root / "out.parquet"), "--placement", "total",
                       "--chunk-size", "20", "--json")
        for t in threads:
            t.join()
        assert not errors and batch.returncode == 0, batch.stderr
        rows = pq.read_table(capped.root / "out.parquet").to_pylist()
        batch_offers = [r["top_offer_id"] for r in rows]
        assert {r["placement"] for r in rows} == {"total"}
        assert served.count("TOTAL") + batch_offers.count("TOTAL") == 50
        assert set(served + batch_offers) == {"TOTAL", "SPARE"}  # the fallback filled every other one
        assert all(r["fallbacks"] == ["decision:fallback_offer"] for r in rows if r["top_offer_id"] == "SPARE")
    finally:
        server.stop()
    again = launch(capped, capped.root)
    try:
        reply = httpx.get(again.url + "/v1/offers/C250?placement=total", timeout=60).json()
        assert offer_of(reply) == "SPARE" and reply["decision"]["dropped"]["capped_total"] == 1
    finally:
        again.stop()
