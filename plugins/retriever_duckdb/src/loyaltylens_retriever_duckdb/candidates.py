"""Precomputed candidate lists: exact top-k retrieval in microseconds at any catalogue size.

The adapter's query texts form a finite vocabulary, and a query's filters are a tier (or
none) and a propensity threshold. For every vocabulary text, tier and threshold *bucket*
(upper edges 0.05, 0.10, ..., 1.00) the index stores the ``K`` most similar offers among
those the tier may see with ``min_propensity_threshold`` at or below the bucket's edge,
best first.

Why that is exact: a query with threshold ``t`` in bucket ``(edge - 0.05, edge]`` may see a
subset ``E_t`` of the bucket's offers ``E_edge``. The bucket's list is the top-``K`` of
``E_edge`` in similarity order, so after dropping offers above ``t`` it is the top of
``E_t`` as far as it goes: any better offer of ``E_t`` is also in ``E_edge`` and would be in
the list. When fewer than ``k`` remain, the list cannot tell (unless it holds every offer of
the bucket) and the retriever falls back to exact search over all offers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

BUCKET_WIDTH = 0.05
BUCKETS = 20  # upper edges 0.05 ... 1.00; thresholds live in [0, 1]
ANY_TIER = 4  # the tier axis: TIERS' four, then "no tier filter"
EDGES = np.round(np.arange(1, BUCKETS + 1) * BUCKET_WIDTH, 10)


def bucket_of(threshold: float | None) -> int:
    """The bucket whose list answers a query with this threshold (None: no filter)."""
    return int(buckets_of(np.array([np.inf if threshold is None else threshold]))[0])


def buckets_of(limits: np.ndarray) -> np.ndarray:
    """``bucket_of`` for an array of thresholds (infinity: no filter)."""
    inside = np.maximum(0, np.searchsorted(EDGES, np.minimum(limits, 1.0) - 1e-12, side="left"))
    return np.where(limits >= 1.0, BUCKETS - 1, inside)


def build_lists(
    query_vectors: np.ndarray,
    vectors: np.ndarray,
    thresholds: np.ndarray,
    tier_mask: np.ndarray,
    size: int,
    *,
    prefilter: int = 4096,
    block: int = 64,
    advance: Callable[[float], None] = lambda n: None,
) -> tuple[np.ndarray, np.ndarray]:
    """int32 ``(texts, 5, BUCKETS, size)`` offer rows, best first, -1 where a list runs out,
    and their float32 similarities (-inf where -1), kept so a later index can update the
    lists for a few changed offers without recomputing them (``update_lists``).

    Per block of texts: one matrix product, the ``prefilter`` most similar offers by
    ``argpartition`` (no full sort of the catalogue), sorted; then, for each tier and
    bucket, the first ``size`` of those the filters keep. A list shorter than ``size``
    therefore holds every eligible offer only when ``prefilter`` covered the catalogue;
    ``exhaustive(...)`` says so."""
    texts, offers = len(query_vectors), len(vectors)
    out = np.full((texts, ANY_TIER + 1, BUCKETS, size), -1, dtype=np.int32)
    sims = np.full(out.shape, -np.inf, dtype=np.float32)
    if offers == 0 or texts == 0:
        return out, sims
    depth = min(prefilter, offers)
    tiers = np.vstack([tier_mask, np.ones((1, offers), dtype=bool)])  # (5, offers)
    # Per tier and offer, the first bucket whose lists may hold it (BUCKETS: none).
    first_bucket = np.where(tiers, np.searchsorted(EDGES + 1e-12, thresholds, side="left"), BUCKETS).astype(np.int8)
    for start in range(0, texts, block):
        similarity = query_vectors[start : start + block] @ vectors.T
        if depth < offers:
            top = _top_unordered(similarity, depth)
            # Where offers tie at the prefilter's cut, argpartition keeps an arbitrary few:
            # keep the lowest rows instead, as exact search does (rare with real embeddings,
            # which tie only for offers with the same text).
            floor = np.take_along_axis(similarity, top, axis=1).min(axis=1)
            for r in np.flatnonzero((similarity >= floor[:, None]).sum(axis=1) > depth):
                top[r] = np.lexsort((np.arange(offers), -similarity[r]))[:depth]
        else:
            top = np.broadcast_to(np.arange(offers), similarity.shape)
        # Best first; equal similarities (offers with the same text) by offer row, as every
        # retrieval path breaks ties.
        order = np.lexsort((top, -np.take_along_axis(similarity, top, axis=1)), axis=-1)
        ranked = np.take_along_axis(top, order, axis=1)  # (block, depth) offer rows, best first
        ranked_sims = np.take_along_axis(similarity, ranked, axis=1)
        rows = np.arange(len(ranked))[:, None]
        for tier in range(ANY_TIER + 1):
            positions = _first_per_bucket(first_bucket[tier][ranked], size)  # (block, BUCKETS, size)
            found = positions < depth
            at = np.minimum(positions, depth - 1)
            out[start : start + len(ranked), tier] = np.where(found, ranked[rows[:, :, None], at], -1)
            sims[start : start + len(ranked), tier] = np.where(found, ranked_sims[rows[:, :, None], at], -np.inf)
        advance(len(similarity))
    return out, sims


def _top_unordered(similarity: np.ndarray, depth: int, sample: int = 4096) -> np.ndarray:
    """Per row, the columns of the ``depth`` largest values (any order; among values tied
    at the cut, an arbitrary few: the caller settles those).

    Why not one ``argpartition`` over every column: at 50,000 offers that is 47 ms per 64
    texts, most of a cold index's candidate lists. A strided sample of the row estimates a
    cut with about twice ``depth`` values above it; only those are partitioned. Exact: when
    at least ``depth`` values clear the cut, the largest ``depth`` are all among them, and a
    row where fewer do is partitioned whole."""
    rows, columns = similarity.shape
    if columns < 8 * depth or columns < 2 * sample:
        return np.argpartition(-similarity, depth - 1, axis=1)[:, :depth]
    sampled = similarity[:, :: columns // sample]
    above = min(sampled.shape[1] - 1, int(np.ceil(2 * depth / columns * sampled.shape[1])))
    cut = np.partition(sampled, sampled.shape[1] - 1 - above, axis=1)[:, sampled.shape[1] - 1 - above]
    top = np.empty((rows, depth), dtype=np.int64)
    for row, (values, limit) in enumerate(zip(similarity, cut)):
        kept = np.flatnonzero(values >= limit)
        if len(kept) < depth:
            top[row] = np.argpartition(-values, depth - 1)[:depth]
        else:
            top[row] = kept[np.argpartition(-values[kept], depth - 1)[:depth]]
    return top


def _first_per_bucket(first_bucket: np.ndarray, size: int) -> np.ndarray:
    """For rows of offers in rank order and the first bucket each may appear in, the
    positions (in that order) of every bucket's first ``size`` eligible offers, as
    ``(rows, BUCKETS, size)``; ``first_bucket.shape[1]`` (past the end) where a list runs out.

    Why this way: bucket ``b`` admits the offers admitted by ``b - 1`` plus those whose
    first bucket is ``b``, so its list is the best ``size`` of the previous list and the
    first ``size`` offers whose first bucket is ``b``. One stable (radix) sort by first
    bucket finds those, and the merge runs on ``2 x size`` positions per bucket, instead of
    a pass over the whole prefilter for every bucket (5x faster at 50,000 offers)."""
    count, depth = first_bucket.shape
    by_bucket = np.argsort(first_bucket, axis=1, kind="stable")  # rank order within a bucket
    keys = (np.take_along_axis(first_bucket, by_bucket, axis=1).astype(np.int64)
            + np.arange(count)[:, None] * (BUCKETS + 1)).ravel()  # sorted: row-major, then bucket
    starts = np.searchsorted(keys, np.arange(count)[:, None] * (BUCKETS + 1) + np.arange(BUCKETS + 1))
    flat = by_bucket.ravel()
    taken = starts[:, :BUCKETS, None] + np.arange(size)  # (rows, BUCKETS, size) into flat
    inside = taken < starts[:, 1:, None]
    fresh = np.where(inside, flat[np.minimum(taken, flat.size - 1)], depth)
    out = np.empty((count, BUCKETS, size), dtype=np.int64)
    best = np.full((count, size), depth, dtype=np.int64)
    for bucket in range(BUCKETS):
        best = np.sort(np.concatenate([best, fresh[:, bucket]], axis=1), axis=1)[:, :size]
        out[:, bucket] = best
    return out


def update_lists(
    lists: np.ndarray,
    sims: np.ndarray,
    remap: np.ndarray,
    changed: np.ndarray,
    query_vectors: np.ndarray,
    vectors: np.ndarray,
    thresholds: np.ndarray,
    tier_mask: np.ndarray,
    *,
    exhaustive_before: bool = False,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The lists for a catalogue in which only the offers ``changed`` (new rows) are new or
    different, from the previous index's lists: old rows are renumbered through ``remap``
    (old row -> new row, -1 for a removed or changed offer) and the changed offers merged in
    by similarity. Each list stays an exact best-first prefix of its bucket's top offers, so
    ``pick`` stays exact: a removal only shortens it, and a changed offer enters only above
    the old list's last similarity (below it, an offer the list never held may rank higher),
    unless the old list ran out and lists were exhaustive. Lists that ran out are no longer known to be
    exhaustive, so the caller must stop claiming they are."""
    size = lists.shape[-1]
    tiers = np.vstack([tier_mask, np.ones((1, len(vectors)), dtype=bool)])
    within = thresholds[changed][None, :] <= EDGES[:, None] + 1e-12  # (BUCKETS, changed)
    eligible = tiers[:, changed][:, None, :] & within[None, :, :]  # (5, BUCKETS, changed)
    out = np.empty_like(lists)
    out_sims = np.empty_like(sims)
    for start in range(0, len(lists), block):
        old = np.asarray(lists[start : start + block])
        rows = np.where(old >= 0, remap[np.maximum(old, 0)], -1)
        before = np.asarray(sims[start : start + block])
        old_sims = np.where(rows >= 0, before, -np.inf).astype(np.float32)
        # The lowest similarity the old list vouched for (inf when it was empty); no limit for
        # a list that ran out while lists were exhaustive (it held every eligible offer).
        boundary = np.where(np.isfinite(before), before, np.inf).min(axis=-1)
        if exhaustive_before:
            boundary = np.where(np.isfinite(before[..., -1]), boundary, -np.inf).astype(np.float32)
        fresh = (query_vectors[start : start + block] @ vectors[changed].T).astype(np.float32)  # (b, changed)
        fresh = np.where(eligible[None], fresh[:, None, None, :], -np.inf).astype(np.float32)
        fresh = np.where(fresh >= boundary[..., None], fresh, -np.inf).astype(np.float32)
        shape = (*rows.shape[:-1], len(changed))
        merged_rows = np.concatenate([rows, np.broadcast_to(changed.astype(np.int32), shape)], axis=-1)
        merged_sims = np.concatenate([old_sims, fresh], axis=-1)
        order = np.lexsort((merged_rows, -merged_sims), axis=-1)[..., :size]  # ties by offer row
        best_sims = np.take_along_axis(merged_sims, order, axis=-1)
        best_rows = np.take_along_axis(merged_rows, order, axis=-1)
        out[start : start + block] = np.where(np.isfinite(best_sims), best_rows, -1)
        out_sims[start : start + block] = best_sims
    return out, out_sims


def exhaustive(offers: int, prefilter: int) -> bool:
    """Do lists that ran out hold every eligible offer (the prefilter saw them all)?"""
    return prefilter >= offers


def pick(
    listed: np.ndarray, thresholds: np.ndarray, threshold: float | None, k: int, complete: bool
) -> np.ndarray | None:
    """The first ``k`` offers of a list the query may see, or None when only exact search
    can answer (fewer than ``k`` remain and the list may have missed some)."""
    limit = np.array([np.inf if threshold is None else threshold])
    return pick_many(listed[None, :], thresholds, limit, np.array([k]), complete)[0]


def pick_many(
    listed: np.ndarray, thresholds: np.ndarray, limits: np.ndarray, ks: np.ndarray, complete: bool,
    sims: np.ndarray | None = None,
) -> list[np.ndarray | None]:
    """``pick`` for every row of ``listed`` at once (a batch's distinct questions: a few
    array operations instead of a dozen per question), each with its threshold limit
    (infinity: no filter) and ``k``. With the lists' similarities ``sims``, a pick whose
    ``k``-th offer ties with the list's last one is also None: an offer just past the end
    of the list may tie too and win on its row, so only exact search can say."""
    present = listed >= 0
    admitted = present & (thresholds[np.maximum(listed, 0)] <= limits[:, None])
    rank = np.cumsum(admitted, axis=1)
    taken = admitted & (rank <= ks[:, None])
    counts = np.minimum(rank[:, -1], ks)
    answered = (rank[:, -1] >= ks) | (complete & ~present[:, -1])
    if sims is not None:
        last = listed.shape[1] - 1 - np.argmax(taken[:, ::-1], axis=1)  # the k-th pick's position
        at_last = sims[np.arange(len(listed)), last] <= sims[:, -1]
        answered &= ~((counts > 0) & present[:, -1] & at_last)
    flat = listed[taken]
    if len(listed) == 1:  # one query (`run`, `GET /v1/offers`): no split to pay for
        return [flat if bool(answered[0]) else None]
    ends = np.cumsum(counts).tolist()
    return [flat[end - count : end] if ok else None
            for end, count, ok in zip(ends, counts.tolist(), answered.tolist())]
