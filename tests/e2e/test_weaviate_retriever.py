"""The Weaviate retriever in the real pipeline (real MiniLM, unmodified weaviate-client)
against the local protocol-level Weaviate: same answers as the embedded retriever."""

from __future__ import annotations

import json

import pytest

from loyaltylens_retriever_weaviate.testing import LocalWeaviate, free_port

pytestmark = pytest.mark.slow

CUSTOMERS = ("C001", "C002", "C123")


@pytest.fixture(scope="module")
def weaviate():
    with LocalWeaviate() as server:
        yield server


def weaviate_env(server):
    return {"LOYALTYLENS_RETRIEVER": "weaviate", "LOYALTYLENS_RETRIEVER_WEAVIATE__URL": server.url,
            "LOYALTYLENS_RETRIEVER_WEAVIATE__GRPC_PORT": str(server.grpc_port)}


def test_same_offers_as_the_embedded_retriever(cli, weaviate):
    for customer in CUSTOMERS:
        embedded = json.loads(cli("run", customer, "--json").stdout)
        proc = cli("run", customer, "--json", extra_env=weaviate_env(weaviate))
        assert proc.returncode == 0, proc.stderr
        remote = json.loads(proc.stdout)
        assert remote["plugins"]["retriever"]["name"] == "weaviate"
        assert len(remote["candidates"]) == len(embedded["candidates"])
        for a, b in zip(remote["candidates"], embedded["candidates"]):
            assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-4)
            # Same offer, or a tie: the catalogue has offers with identical text.
            assert a["offer"]["offer_id"] == b["offer"]["offer_id"] or a["offer"]["title"] == b["offer"]["title"]
        assert remote["fallbacks"] == embedded["fallbacks"]
    assert len(weaviate.objects("LoyaltyLensOffers")) == 200
    assert weaviate.batches == 1  # indexed once, reused by later runs


def test_batch_through_weaviate(cli, weaviate, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(CUSTOMERS))
    out = tmp_path / "r.parquet"
    proc = cli("batch", "--ids", str(ids), "--out", str(out), "--json", extra_env=weaviate_env(weaviate))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["computed"] == len(CUSTOMERS)


def test_weaviate_down_is_one_line_or_falls_back(cli):
    down = {"LOYALTYLENS_RETRIEVER": "weaviate", "LOYALTYLENS_RETRIEVER_WEAVIATE__URL": f"http://127.0.0.1:{free_port()}",
            "LOYALTYLENS_RETRIEVER_WEAVIATE__GRPC_PORT": str(free_port())}
    proc = cli("run", "C002", extra_env=down)
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Weaviate at http://127.0.0.1:" in lines[0] and "fallback" in lines[0]
    proc = cli("run", "C002", "--json", extra_env={**down, "LOYALTYLENS_RETRIEVER_WEAVIATE__FALLBACK": "duckdb"})
    assert proc.returncode == 0, proc.stderr
    assert "retriever:weaviate_unreachable" in json.loads(proc.stdout)["fallbacks"]
