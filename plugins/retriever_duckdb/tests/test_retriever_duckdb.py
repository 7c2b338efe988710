"""The DuckDB retriever: real DuckDB file, real numpy search; a bag-of-words embedder
from the core's testing module stands in for the embedding stage."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from loyaltylens_core.kernel.contracts import RetrievalQuery
from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.sdk.testing import FakeEmbedder, make_context
from loyaltylens_retriever_duckdb import DuckDBRetrieverSettings, build
from loyaltylens_retriever_duckdb.retriever import top_k

OFFERS = [
    {"offer_id": "A", "title": "Birthday coffee", "description": "free coffee birthday treat",
     "category": "birthday", "min_propensity_threshold": 0.1},
    {"offer_id": "B", "title": "Triple points groceries", "description": "points groceries points",
     "category": "points_multiplier", "min_propensity_threshold": 0.6},
    {"offer_id": "C", "title": "Gold to platinum", "description": "upgrade gold tier platinum",
     "category": "tier_upgrade", "min_propensity_threshold": 0.3, "tiers": ["gold"]},
]


class CountingEmbedder(FakeEmbedder):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return super().embed(texts)


@pytest.fixture
def catalogue(tmp_path):
    path = tmp_path / "offers.json"
    path.write_text(json.dumps(OFFERS))
    return path


def retriever_for(tmp_path, catalogue, embedder=None):
    context = make_context(tmp_path, "retriever", "duckdb", components={"embedder": embedder or CountingEmbedder()})
    r = build(DuckDBRetrieverSettings(catalogue=catalogue), context)
    r.prepare()
    return r


def test_self_indexes_into_duckdb_on_first_use(tmp_path, catalogue):
    r = retriever_for(tmp_path, catalogue)
    con = duckdb.connect(str(tmp_path / "loyaltylens.duckdb"))
    assert con.execute("SELECT count(*) FROM offer_vectors").fetchone()[0] == 3
    assert r.vectors.shape == (3, 64)


def test_exact_cosine_ranking_matches_brute_force(tmp_path, catalogue):
    r = retriever_for(tmp_path, catalogue)
    query = RetrievalQuery(customer_id="C1", text="free birthday coffee", k=3)
    got = r.retrieve(query)
    q = FakeEmbedder().embed([query.text])[0]
    expected = sorted(range(3), key=lambda i: -float(r.vectors[i] @ q))
    assert [c.offer.offer_id for c in got] == [r.offers[i].offer_id for i in expected]
    assert got[0].offer.offer_id == "A" and got[0].rank == 1
    assert got[0].similarity == pytest.approx(float(r.vectors[expected[0]] @ q), abs=1e-6)


def test_threshold_and_tier_filters(tmp_path, catalogue):
    r = retriever_for(tmp_path, catalogue)
    ids = lambda **kw: [c.offer.offer_id for c in r.retrieve(RetrievalQuery(customer_id="C1", text="points", k=3, **kw))]
    assert set(ids(max_threshold=0.5)) == {"A", "C"}
    assert set(ids(max_threshold=0.5, tier="silver")) == {"A"}
    assert ids(max_threshold=0.05) == []  # the pipeline records the fallback and retries unfiltered


def test_second_start_reuses_the_index_and_a_changed_catalogue_reindexes(tmp_path, catalogue):
    retriever_for(tmp_path, catalogue)
    again = CountingEmbedder()
    retriever_for(tmp_path, catalogue, again)
    assert again.calls == 0
    catalogue.write_text(json.dumps(OFFERS[:2]))
    changed = retriever_for(tmp_path, catalogue, CountingEmbedder())
    assert len(changed.offers) == 2


def test_retrieve_many_equals_single_retrievals(tmp_path, catalogue):
    r = retriever_for(tmp_path, catalogue)
    queries = [RetrievalQuery(customer_id=f"C{i}", text=t, k=2, max_threshold=m)
               for i, (t, m) in enumerate([("birthday coffee", 0.9), ("gold upgrade", 0.4), ("points", None)])]
    assert r.retrieve_many(queries) == [r.retrieve(q) for q in queries]


def test_a_batch_asking_the_same_question_many_times_gets_each_customer_the_exact_answer(tmp_path, catalogue):
    """Customers sharing text, tier and k, with thresholds admitting the same offers, are
    answered once; thresholds on either side of an offer's threshold are different questions."""
    r = retriever_for(tmp_path, catalogue)
    asked = [("birthday coffee", 0.95, None), ("birthday coffee", 0.61, None), ("birthday coffee", 0.6, None),
             ("birthday coffee", 0.59, None), ("birthday coffee", 0.3, "gold"), ("birthday coffee", 0.3, "silver"),
             ("birthday coffee", 0.29, "gold"), ("birthday coffee", None, None), ("points", 0.6, None)]
    queries = [RetrievalQuery(customer_id=f"C{i}", text=t, k=3, max_threshold=m, tier=tier)
               for i, (t, m, tier) in enumerate(asked * 3)]
    answers = r.retrieve_many(queries)
    assert answers == [r.retrieve(q) for q in queries]
    ids = [[c.offer.offer_id for c in a] for a in answers[: len(asked)]]
    assert ids[0] == ids[1] == ids[2] != ids[3]  # 0.6 admits B (threshold 0.6), 0.59 does not
    assert "C" in ids[4] and "C" not in ids[5] and "C" not in ids[6]  # gold-only C, at 0.3 and above
    answers[0].clear()
    assert answers[len(asked)] and answers[2 * len(asked)]  # every customer has a list of their own


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), ("{not json", "not valid JSON"), ("[]", "is empty"),
    ('[{"offer_id": "X"}]', "field 'title'"),
])
def test_bad_catalogue_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "offers.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        retriever_for(tmp_path, path)


def test_top_k_orders_best_first():
    sims = np.array([0.1, 0.9, -np.inf, 0.5])
    assert top_k(sims, 2).tolist() == [1, 3]


class RecordingEmbedder(FakeEmbedder):
    """Remembers every text it was asked to embed."""

    name = "counting"  # the same model as CountingEmbedder: stored vectors stay valid

    def __init__(self):
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts.extend(texts)
        return super().embed(texts)


def test_the_query_vocabulary_is_embedded_at_index_time_so_runs_never_embed(tmp_path, catalogue):
    from loyaltylens_core.kernel.adapters import query_text, query_vocabulary
    from loyaltylens_core.sdk.testing import make_features

    r = retriever_for(tmp_path, catalogue)
    assert len(r.query_rows) == len(query_vocabulary()) == 5184
    embedder = RecordingEmbedder()
    again = retriever_for(tmp_path, catalogue, embedder)  # a new process on the same index
    text = query_text(make_features(tier="silver", recency_days=200))
    single = again.retrieve(RetrievalQuery(customer_id="C1", text=text, k=2))
    many = again.retrieve_many([RetrievalQuery(customer_id="C1", text=text, k=2)])
    assert embedder.texts == []
    assert many == [single]
    best = next(i for i, o in enumerate(again.offers) if o.offer_id == single[0].offer.offer_id)
    assert single[0].similarity == pytest.approx(float(again.vectors[best] @ FakeEmbedder().embed([text])[0]), abs=1e-6)
    # A text outside the vocabulary is still embedded, once, and gives the exact answer.
    other = again.retrieve(RetrievalQuery(customer_id="C1", text="free birthday coffee", k=1))
    assert embedder.texts == ["free birthday coffee"] and other[0].offer.offer_id == "A"


def test_changing_one_offer_re_embeds_only_that_offer(tmp_path, catalogue):
    retriever_for(tmp_path, catalogue)
    changed = [dict(OFFERS[0], description="free cake birthday treat"), *OFFERS[1:],
               {"offer_id": "D", "title": "Weekend fuel", "description": "fuel discount weekend",
                "category": "partner", "min_propensity_threshold": 0.2}]
    catalogue.write_text(json.dumps(changed))
    embedder = RecordingEmbedder()
    r = retriever_for(tmp_path, catalogue, embedder)
    assert len(embedder.texts) == 2 and all("cake" in t or "fuel" in t for t in embedder.texts)
    assert r.last_index == {"offers": 4, "embedded": 2, "kept": 2, "query_texts": 5184, "query_texts_embedded": 0}
    assert [o.offer_id for o in r.offers] == ["A", "B", "C", "D"]
    q = FakeEmbedder().embed(["free cake"])[0]
    assert float(r.vectors[0] @ q) == pytest.approx(float(FakeEmbedder().embed([changed[0]["title"] + ". " + changed[0]["description"] + " (birthday offer)"])[0] @ q), abs=1e-6)


def test_reindexing_rewrites_only_changed_rows_and_leaves_duckdb_as_a_rebuild_would(tmp_path, catalogue):
    """Edited (text or not), added and removed offers: DuckDB ends with exactly the rows a
    full rebuild writes, and a new process reading it back retrieves the same."""
    first = retriever_for(tmp_path, catalogue)
    first.close()
    edited = [dict(OFFERS[0], min_propensity_threshold=0.05), dict(OFFERS[2], description="upgrade to platinum now"),
              {"offer_id": "E", "title": "Evening cinema", "description": "cinema tickets evening",
               "category": "partner", "min_propensity_threshold": 0.4}]  # B removed
    catalogue.write_text(json.dumps(edited))
    incremental = retriever_for(tmp_path, catalogue)
    assert incremental.last_index["embedded"] == 2  # C's new text and E; A's threshold needs no vector
    incremental.close()

    def stored(directory):
        con = duckdb.connect(str(directory / "loyaltylens.duckdb"), read_only=True)
        rows = con.execute("SELECT offer_id, offer, min_propensity_threshold, content_hash, embedding "
                           "FROM offer_vectors ORDER BY offer_id").fetchall()
        con.close()
        return rows

    rebuilt_dir = tmp_path / "rebuilt"
    rebuilt_dir.mkdir()
    rebuilt = retriever_for(rebuilt_dir, catalogue)
    rebuilt.close()
    assert [r[0] for r in stored(tmp_path)] == ["A", "C", "E"]
    assert stored(tmp_path) == stored(rebuilt_dir)
    for sidecar_dir in tmp_path.glob("loyaltylens-*"):  # a new process must read DuckDB, not the mapped files
        import shutil

        shutil.rmtree(sidecar_dir)
    again = retriever_for(tmp_path, catalogue)
    query = RetrievalQuery(customer_id="C1", text="birthday coffee", k=3, max_threshold=0.06)
    assert [c.offer.offer_id for c in again.retrieve(query)] == ["A"]
    assert again.retrieve(query) == rebuilt.retrieve(query)


def test_index_rebuild_re_embeds_everything(tmp_path, catalogue):
    r = retriever_for(tmp_path, catalogue)
    r.embedder = embedder = RecordingEmbedder()
    r.index(rebuild=True)
    assert len(embedder.texts) == 3 + 5184


def counted_searches(r, monkeypatch):
    """How many questions reached the search itself (not the remembered answers)."""
    searched = []
    search = r._retrieve_distinct

    def counting(queries):
        searched.extend(q.text for q in queries)
        return search(queries)

    monkeypatch.setattr(r, "_retrieve_distinct", counting)
    return searched


def test_a_question_asked_again_is_remembered_until_the_index_changes(tmp_path, catalogue, monkeypatch):
    r = retriever_for(tmp_path, catalogue)
    searched = counted_searches(r, monkeypatch)
    query = RetrievalQuery(customer_id="C1", text="free birthday coffee", k=3)
    first = r.retrieve(query)
    again = r.retrieve(query.model_copy(update={"customer_id": "C2"}))
    assert again == first and again is not first and searched == ["free birthday coffee"]
    again.clear()
    assert r.retrieve(query) == first  # a caller's list is its own
    assert len(r.retrieve(query.model_copy(update={"k": 1}))) == 1  # another k is another question
    assert r.retrieve(query.model_copy(update={"max_threshold": 0.5})) != first  # B (0.6) is not admitted
    assert len(searched) == 3
    catalogue.write_text(json.dumps(OFFERS[1:]))
    r.index()
    assert "A" not in [c.offer.offer_id for c in r.retrieve(query)]


def test_remembered_answers_are_bounded_and_can_be_switched_off(tmp_path, catalogue, monkeypatch):
    context = make_context(tmp_path, "retriever", "duckdb", components={"embedder": CountingEmbedder()})
    r = build(DuckDBRetrieverSettings(catalogue=catalogue, answer_cache=2), context)
    r.prepare()
    searched = counted_searches(r, monkeypatch)
    ask = lambda text: r.retrieve(RetrievalQuery(customer_id="C1", text=text, k=2))
    for text in ("coffee", "points", "gold", "points", "coffee"):
        ask(text)
    assert searched == ["coffee", "points", "gold", "coffee"] and len(r._answers) == 2
    r.settings = r.settings.model_copy(update={"answer_cache": 0})
    r._answers.clear()
    ask("gold"), ask("gold")
    assert searched[-2:] == ["gold", "gold"] and not r._answers
