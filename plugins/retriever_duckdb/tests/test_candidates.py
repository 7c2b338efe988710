"""Candidate lists answer exactly what exact search answers, or say they cannot."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pytest

from loyaltylens_core.kernel.adapters import query_vocabulary
from loyaltylens_core.kernel.contracts import TIERS, RetrievalQuery
from loyaltylens_core.sdk.testing import FakeEmbedder, make_context
from loyaltylens_retriever_duckdb import DuckDBRetrieverSettings, build
from loyaltylens_retriever_duckdb.candidates import (
    ANY_TIER, bucket_of, build_lists, exhaustive, pick, pick_many, update_lists,
)


def brute_force(similarity, thresholds, tier_ok, threshold, k):
    eligible = [i for i in np.argsort(-similarity, kind="stable")
                if tier_ok[i] and (threshold is None or thresholds[i] <= threshold)]
    return eligible[:k]


@pytest.mark.parametrize("offers,prefilter", [(300, 4096), (300, 40), (2000, 256)])
def test_lists_give_the_exact_top_k_or_defer_to_exact_search(offers, prefilter):
    rng = np.random.default_rng(offers + prefilter)
    vectors = rng.normal(size=(offers, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(40, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    thresholds = np.round(rng.uniform(0, 1, size=offers), 2)
    tier_mask = rng.uniform(size=(4, offers)) < 0.7
    lists, _ = build_lists(queries, vectors, thresholds, tier_mask, 8, prefilter=prefilter, block=16)
    complete = exhaustive(offers, prefilter)
    answered = deferred = 0
    for _ in range(600):
        q = int(rng.integers(len(queries)))
        tier = int(rng.integers(ANY_TIER + 1))
        threshold = None if rng.uniform() < 0.1 else float(np.round(rng.uniform(0, 1), 3))
        k = int(rng.integers(1, 9))
        listed = lists[q, tier, bucket_of(threshold)]
        got = pick(listed, thresholds, threshold, k, complete)
        tier_ok = np.ones(offers, bool) if tier == ANY_TIER else tier_mask[tier]
        expected = brute_force(queries[q] @ vectors.T, thresholds, tier_ok, threshold, k)
        if got is None:
            deferred += 1
            assert listed[-1] >= 0 or not complete  # only a full list, or a partial view, defers
        else:
            answered += 1
            assert got.tolist() == expected
    assert answered > 400 and answered + deferred == 600  # the lists answer most queries


@pytest.mark.parametrize("prefilter", [50, 4096])
def test_every_list_is_the_first_eligible_offers_of_the_prefilter_best_first(prefilter):
    """The whole table, against its definition: per text, tier and bucket, the first ``size``
    offers of the ``prefilter`` most similar (best first, ties by row) the filters admit."""
    rng = np.random.default_rng(prefilter)
    vectors, thresholds, tier_mask = random_catalogue(rng, 400)
    thresholds[:20] = [0.0, 0.05, 0.1, 1.0, 0.049999, 0.0500001] + [0.35] * 14  # on and beside edges
    queries, _, _ = random_catalogue(rng, 30)
    lists, sims = build_lists(queries, vectors, thresholds, tier_mask, 6, prefilter=prefilter, block=7)
    edges = np.round(np.arange(1, 21) * 0.05, 10)
    for q in range(len(queries)):
        similarity = queries[q] @ vectors.T
        ranked = np.lexsort((np.arange(len(vectors)), -similarity))[: min(prefilter, len(vectors))]
        for tier in range(ANY_TIER + 1):
            tier_ok = np.ones(len(vectors), bool) if tier == ANY_TIER else tier_mask[tier]
            for bucket, edge in enumerate(edges):
                expected = [i for i in ranked if tier_ok[i] and thresholds[i] <= edge + 1e-12][:6]
                assert lists[q, tier, bucket].tolist() == expected + [-1] * (6 - len(expected))
                assert np.allclose(sims[q, tier, bucket][: len(expected)], similarity[expected], atol=1e-6)


def test_many_lists_are_picked_at_once_with_filters_short_lists_and_ties_at_the_end():
    thresholds = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 0.2])
    listed = np.array([
        [5, 3, 7, -1],  # k=2, no filter: the first two
        [5, 3, 7, -1],  # k=2, limit 0.7: offer 3 (0.9) filtered out
        [5, 3, 7, -1],  # k=3, limit 0.7: two admitted, the list ran out: all of them (complete)
        [1, 2, 4, 6],   # k=4, the 4th pick ties with the list's last similarity: exact search
        [1, 2, 4, 6],   # k=2, below the last similarity: answered
        [1, 2, 4, 6],   # k=2, limit 0.05: nothing admitted and the list is full: exact search
    ])
    sims = np.array([[0.9, 0.8, 0.7, -np.inf]] * 3 + [[0.9, 0.8, 0.7, 0.7], [0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    limits = np.array([np.inf, 0.7, 0.7, np.inf, np.inf, 0.05])
    ks = np.array([2, 2, 3, 4, 2, 2])
    got = pick_many(listed, thresholds, limits, ks, True, sims.astype(np.float32))
    assert [None if g is None else g.tolist() for g in got] == [[5, 3], [5, 7], [5, 7], None, [1, 2], None]
    partial = pick_many(listed, thresholds, limits, ks, False, sims.astype(np.float32))
    assert partial[2] is None  # a short list from a partial prefilter may have missed offers
    assert pick(listed[1], thresholds, 0.7, 2, True).tolist() == [5, 7]


def test_the_sampled_cut_finds_the_same_top_offers_as_a_full_partition():
    from loyaltylens_retriever_duckdb.candidates import _top_unordered

    rng = np.random.default_rng(3)
    similarity = rng.normal(size=(6, 2000)).astype(np.float32)
    similarity[5] = 0.0
    similarity[5, [0, 20, 40]] = 1.0  # only three values clear the cut the sample suggests: whole-row path
    similarity[5, 1:30] = np.linspace(0.5, 0.9, 29)
    got = _top_unordered(similarity, 20, sample=100)
    expected = np.argpartition(-similarity, 19, axis=1)[:, :20]
    for row in range(6):
        assert sorted(similarity[row, got[row]].tolist()) == sorted(similarity[row, expected[row]].tolist())
        assert len(set(got[row].tolist())) == 20


def random_catalogue(rng, offers, dim=24):
    vectors = rng.normal(size=(offers, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, np.round(rng.uniform(0, 1, size=offers), 2), rng.uniform(size=(4, offers)) < 0.7


@pytest.mark.parametrize("prefilter", [64, 4096])
def test_updated_lists_stay_exact_after_offers_change_disappear_and_arrive(prefilter):
    rng = np.random.default_rng(5)
    vectors, thresholds, tiers = random_catalogue(rng, 500)
    queries = rng.normal(size=(30, 24)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    lists, sims = build_lists(queries, vectors, thresholds, tiers, 8, prefilter=prefilter)
    # New catalogue: drop rows 0-9, change 10-19 (new vector and threshold), add 15 offers.
    keep = np.arange(20, 500)
    changed_vectors, changed_thresholds, changed_tiers = random_catalogue(rng, 25)
    new_vectors = np.vstack([vectors[keep], changed_vectors])
    new_thresholds = np.concatenate([thresholds[keep], changed_thresholds])
    new_tiers = np.hstack([tiers[:, keep], changed_tiers])
    remap = np.full(500, -1)
    remap[keep] = np.arange(len(keep))
    changed = np.arange(len(keep), len(new_vectors))
    updated, _ = update_lists(lists, sims, remap, changed, queries, new_vectors, new_thresholds, new_tiers,
                              exhaustive_before=exhaustive(500, prefilter), block=7)
    answered = 0
    for _ in range(500):
        q, tier, k = int(rng.integers(30)), int(rng.integers(ANY_TIER + 1)), int(rng.integers(1, 9))
        threshold = float(np.round(rng.uniform(0, 1), 3))
        got = pick(updated[q, tier, bucket_of(threshold)], new_thresholds, threshold, k, complete=False)
        tier_ok = np.ones(len(new_vectors), bool) if tier == ANY_TIER else new_tiers[tier]
        expected = brute_force(queries[q] @ new_vectors.T, new_thresholds, tier_ok, threshold, k)
        if got is not None:
            answered += 1
            assert got.tolist() == expected
    assert answered > 300


def test_buckets_cover_thresholds_on_their_edges():
    assert bucket_of(None) == bucket_of(1.0) == 19
    assert bucket_of(0.0) == 0 and bucket_of(0.05) == 0 and bucket_of(0.0500001) == 1
    assert bucket_of(0.999) == 19


def make_catalogue(path, n, seed=0):
    rng = np.random.default_rng(seed)
    words = "coffee points fuel bakery cinema gold silver travel weekend family snacks upgrade".split()
    offers = []
    for i in range(n):
        title = " ".join(rng.choice(words, size=3))
        offers.append({"offer_id": f"O{i:05d}", "title": title, "description": f"{title} offer {i}",
                       "category": str(rng.choice(["birthday", "points_multiplier", "tier_upgrade"])),
                       "min_propensity_threshold": float(np.round(rng.uniform(0, 1), 2)),
                       "tiers": sorted(set(rng.choice(TIERS, size=2)))})
    path.write_text(json.dumps(offers))
    return path


def retriever(tmp_path, catalogue, **settings):
    context = make_context(tmp_path, "retriever", "duckdb", components={"embedder": FakeEmbedder()})
    r = build(DuckDBRetrieverSettings(catalogue=catalogue, **settings), context)
    r.prepare()
    return r


def test_the_retriever_answers_from_lists_exactly_as_from_a_scan(tmp_path):
    catalogue = make_catalogue(tmp_path / "offers.json", 400)
    listed = retriever(tmp_path / "a", catalogue, prefilter=64)
    scanned = retriever(tmp_path / "b", catalogue, candidate_lists=0)
    assert listed.lists is not None and scanned.lists is None
    rng = np.random.default_rng(1)
    texts = query_vocabulary()
    queries = [
        RetrievalQuery(customer_id="C1", text=texts[int(rng.integers(len(texts)))], k=int(rng.integers(1, 6)),
                       max_threshold=None if i % 10 == 0 else float(np.round(rng.uniform(0, 1), 3)),
                       tier=None if i % 7 == 0 else TIERS[int(rng.integers(4))])
        for i in range(300)
    ]
    from_lists = sum(found is not None for found in listed._listed_many(queries))
    assert from_lists > 150
    for q in queries:
        a, b = listed.retrieve(q), scanned.retrieve(q)
        same_answer(a, b)  # bag-of-words vectors tie often
        assert [c.rank for c in a] == list(range(1, len(a) + 1))
        assert all(c.offer.min_propensity_threshold <= (q.max_threshold if q.max_threshold is not None else 1)
                   and (q.tier is None or q.tier in c.offer.tiers) for c in a)
    assert listed.retrieve_many(queries) == [listed.retrieve(q) for q in queries]
    assert scanned.retrieve_many(queries) == [scanned.retrieve(q) for q in queries]


def same_answer(a, b):
    """Equal similarities in order, and the same offer wherever its similarity is not tied
    (within the list, or with an offer just past its end)."""
    sims = [c.similarity for c in a]
    assert sims == pytest.approx([c.similarity for c in b], abs=1e-5)  # float32 products differ in the last bits
    for i, sim in enumerate(sims):
        tied = sum(abs(sim - other) < 1e-5 for other in sims) > 1
        if not tied and sim > sims[-1] + 1e-5:
            assert a[i].offer.offer_id == b[i].offer.offer_id


def mapped(array) -> bool:
    """Is this array a view of a memory-mapped file (not a copy in the process's heap)?"""
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None) if not isinstance(base, mmap.mmap) else None
    return False


def test_a_new_process_maps_the_index_without_reading_the_catalogue(tmp_path, monkeypatch):
    catalogue = make_catalogue(tmp_path / "offers.json", 50)
    first = retriever(tmp_path, catalogue)
    import loyaltylens_retriever_duckdb.retriever as module

    monkeypatch.setattr(module, "load_catalogue", lambda path: pytest.fail("the catalogue was parsed"))
    second = retriever(tmp_path, catalogue)
    assert mapped(second.vectors) and mapped(second.lists) and not mapped(np.zeros(3))
    q = RetrievalQuery(customer_id="C1", text=query_vocabulary()[7], k=3, max_threshold=0.5)
    assert second.retrieve(q) == first.retrieve(q)


def test_a_touched_but_unchanged_catalogue_is_not_reindexed_and_a_changed_one_is(tmp_path):
    catalogue = make_catalogue(tmp_path / "offers.json", 50)
    retriever(tmp_path, catalogue)
    catalogue.write_text(catalogue.read_text())  # new mtime, same content
    again = retriever(tmp_path, catalogue)
    assert again.last_index == {}  # mapped, not indexed
    offers = json.loads(catalogue.read_text())
    offers[0]["title"] = "something else entirely"
    catalogue.write_text(json.dumps(offers))
    changed = retriever(tmp_path, catalogue)
    assert changed.last_index["embedded"] == 1 and changed.offers[0].title == "something else entirely"
    assert changed.lists_complete is False  # updated in place: short lists no longer prove exhaustive
    q = RetrievalQuery(customer_id="C1", text="something else entirely", k=1)
    assert changed.retrieve(q)[0].offer.offer_id == "O00000"
