"""The unmodified weaviate-client v4 against a local server speaking Weaviate's REST and
gRPC protocols (loyaltylens_retriever_weaviate.testing.LocalWeaviate)."""

from __future__ import annotations

import json

import pytest

from loyaltylens_core.kernel.contracts import RetrievalQuery
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.testing import FakeEmbedder, FakeRetriever, make_context
from loyaltylens_retriever_weaviate import WeaviateRetrieverSettings, build
from loyaltylens_retriever_weaviate.testing import LocalWeaviate, free_port

OFFERS = [
    {"offer_id": "A", "title": "Birthday coffee", "description": "free coffee birthday treat",
     "category": "birthday", "min_propensity_threshold": 0.1},
    {"offer_id": "B", "title": "Triple points groceries", "description": "points groceries points",
     "category": "points_multiplier", "min_propensity_threshold": 0.6},
    {"offer_id": "C", "title": "Gold to platinum", "description": "upgrade gold tier platinum",
     "category": "tier_upgrade", "min_propensity_threshold": 0.3, "tiers": ["gold"]},
]


@pytest.fixture
def server():
    with LocalWeaviate() as w:
        yield w


@pytest.fixture
def catalogue(tmp_path):
    path = tmp_path / "offers.json"
    path.write_text(json.dumps(OFFERS))
    return path


def retriever_for(tmp_path, server, catalogue, fallback_retriever=None, **settings):
    context = make_context(tmp_path, "retriever", "weaviate", components={"embedder": FakeEmbedder()},
                           fallbacks={("retriever", "duckdb"): fallback_retriever or FakeRetriever()})
    base = {"url": server.url if server else f"http://127.0.0.1:{free_port()}",
            "grpc_port": server.grpc_port if server else free_port(), "catalogue": catalogue, "timeout_s": 2}
    r = build(WeaviateRetrieverSettings(**{**base, **settings}), context)
    r.prepare()
    return r


def ids(candidates):
    return [c.offer.offer_id for c in candidates]


def test_creates_collection_and_indexes_offers_on_first_use(tmp_path, server, catalogue):
    r = retriever_for(tmp_path, server, catalogue)
    stored = server.objects("LoyaltyLensOffers")
    assert len(stored) == 3 and server.batches == 1
    config = server.classes["LoyaltyLensOffers"]["config"]
    assert config["description"].startswith("loyaltylens offers fingerprint=")
    assert {p["name"] for p in config["properties"]} == {"offer_id", "content_hash", "payload", "min_propensity_threshold", "tiers"}
    r.close()


def test_near_vector_ranks_by_cosine_and_returns_similarity(tmp_path, server, catalogue):
    r = retriever_for(tmp_path, server, catalogue)
    got = r.retrieve(RetrievalQuery(customer_id="C1", text="free birthday coffee", k=3))
    assert ids(got)[0] == "A" and [c.rank for c in got] == [1, 2, 3]
    q = FakeEmbedder().embed(["free birthday coffee"])[0]
    a = FakeEmbedder().embed(["Birthday coffee. free coffee birthday treat (birthday offer)"])[0]
    assert got[0].similarity == pytest.approx(float(a @ q), abs=1e-5)
    assert got[0].similarity >= got[1].similarity >= got[2].similarity
    r.close()


def test_threshold_and_tier_filters_run_in_weaviate(tmp_path, server, catalogue):
    r = retriever_for(tmp_path, server, catalogue)
    query = lambda **kw: set(ids(r.retrieve(RetrievalQuery(customer_id="C1", text="points", k=3, **kw))))
    assert query(max_threshold=0.5) == {"A", "C"}
    assert query(max_threshold=0.5, tier="silver") == {"A"}
    assert query(max_threshold=0.05) == set()  # the pipeline then records the fallback and retries unfiltered
    r.close()


def test_retrieve_many_matches_single_and_dedupes_searches(tmp_path, server, catalogue):
    r = retriever_for(tmp_path, server, catalogue)
    queries = [RetrievalQuery(customer_id=f"C{i}", text=t, k=2, max_threshold=m)
               for i, (t, m) in enumerate([("birthday", 0.9), ("gold upgrade", 0.4), ("birthday", 0.9)])]
    before = server.searches
    many = r.retrieve_many(queries)
    assert server.searches - before == 2  # the repeated query was searched once
    assert many == [r.retrieve(q) for q in queries]
    r.close()


def test_existing_index_is_reused_and_a_changed_catalogue_reindexes(tmp_path, server, catalogue):
    retriever_for(tmp_path, server, catalogue).close()
    retriever_for(tmp_path, server, catalogue).close()
    assert server.batches == 1
    catalogue.write_text(json.dumps(OFFERS[:2]))
    retriever_for(tmp_path, server, catalogue).close()
    # one offer removed: deleted by filter, nothing re-embedded or re-inserted
    assert server.batches == 1 and server.deletes == 1 and len(server.objects("LoyaltyLensOffers")) == 2


def test_api_key_is_sent_and_a_wrong_one_is_a_clear_error(tmp_path, catalogue, monkeypatch):
    with LocalWeaviate(api_key="wv-marker-key") as server:
        monkeypatch.setenv("WEAVIATE_API_KEY", "wv-marker-key")
        retriever_for(tmp_path, server, catalogue).close()
        monkeypatch.setenv("WEAVIATE_API_KEY", "wrong-marker-key")
        with pytest.raises(StageError) as info:
            retriever_for(tmp_path, server, catalogue)
    assert "api_key" in str(info.value) or "WEAVIATE_API_KEY" in str(info.value)
    assert "marker-key" not in str(info.value)


def test_weaviate_down_is_one_line_naming_the_url(tmp_path, catalogue):
    with pytest.raises(StageError) as info:
        retriever_for(tmp_path, None, catalogue, url="http://127.0.0.1:9")
    message = str(info.value)
    assert message.startswith("Weaviate at http://127.0.0.1:9 is unreachable")
    assert "fallback" in message and "\n" not in message


def test_down_with_fallback_answers_from_the_embedded_retriever(tmp_path, catalogue):
    r = retriever_for(tmp_path, None, catalogue, url="http://127.0.0.1:9", fallback="duckdb")
    assert r.fallback_reason == "weaviate_unreachable"
    assert ids(r.retrieve(RetrievalQuery(customer_id="C1", text="x", k=2))) == ["F1", "F2"]


def test_server_dying_mid_run_switches_to_the_fallback(tmp_path, catalogue):
    server = LocalWeaviate().__enter__()
    r = retriever_for(tmp_path, server, catalogue, fallback="duckdb")
    assert r.fallback_reason is None
    server.stop()
    got = r.retrieve(RetrievalQuery(customer_id="C1", text="birthday", k=1))
    assert r.fallback_reason == "weaviate_unreachable" and ids(got) == ["F1"]


def test_bad_url_is_a_config_error(tmp_path, catalogue):
    from loyaltylens_core.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="is not an http"):
        retriever_for(tmp_path, None, catalogue, url="localhost:8080")


def test_index_skips_an_unchanged_catalogue_and_rebuild_reembeds_it(tmp_path, server, catalogue):
    r = retriever_for(tmp_path, server, catalogue)
    assert server.batches == 1
    assert r.index() == 3 and r.last_index == {"offers": 3, "embedded": 0, "kept": 3}
    assert server.batches == 1  # nothing written: the collection already holds this catalogue
    assert r.index(rebuild=True) == 3 and r.last_index["embedded"] == 3
    assert server.batches == 2
    catalogue.write_text(json.dumps(OFFERS[:2]))
    assert r.index() == 2 and r.last_index == {"offers": 2, "embedded": 0, "kept": 2, "removed": 1}
    assert len(server.objects("LoyaltyLensOffers")) == 2
    r.close()


class CountingEmbedder(FakeEmbedder):
    name = "FakeEmbedder"  # the same model as the index was built with: vectors are reusable

    def __init__(self):
        self.texts = []

    def embed(self, texts):
        self.texts.extend(texts)
        return super().embed(texts)


def test_only_new_and_changed_offers_are_embedded_and_upserted(tmp_path, server, catalogue):
    retriever_for(tmp_path, server, catalogue).close()
    changed = [dict(OFFERS[0], description="free cake birthday treat"), OFFERS[1],
               dict(OFFERS[2], min_propensity_threshold=0.9),  # same text, new threshold
               {"offer_id": "D", "title": "Weekend fuel", "description": "fuel discount weekend",
                "category": "partner", "min_propensity_threshold": 0.2}]
    catalogue.write_text(json.dumps(changed))
    embedder = CountingEmbedder()
    context = make_context(tmp_path, "retriever", "weaviate", components={"embedder": embedder},
                           fallbacks={("retriever", "duckdb"): FakeRetriever()})
    r = build(WeaviateRetrieverSettings(url=server.url, grpc_port=server.grpc_port, catalogue=catalogue,
                                        timeout_s=2), context)
    r.prepare()
    assert r.last_index == {"offers": 4, "embedded": 3, "kept": 1, "removed": 0}
    assert len(embedder.texts) == 3 and not any("Triple points" in t for t in embedder.texts)
    stored = {o["properties"]["offer_id"]: o["properties"] for o in server.objects("LoyaltyLensOffers").values()}
    assert set(stored) == {"A", "B", "C", "D"} and json.loads(stored["C"]["payload"])["min_propensity_threshold"] == 0.9
    got = r.retrieve(RetrievalQuery(customer_id="C1", text="free cake", k=1))
    assert got[0].offer.description == "free cake birthday treat"
    assert server.classes["LoyaltyLensOffers"]["config"]["description"].endswith(r._fingerprint(
        [__import__("loyaltylens_core.kernel.contracts", fromlist=["x"]).Offer(**o) for o in changed]))
    r.close()
