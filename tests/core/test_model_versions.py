"""Numbered model versions shared by the propensity plugins."""

from __future__ import annotations

import json
import re

import pytest

from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.sdk.model_versions import model_versions, next_model_version

PATTERN = re.compile(r"^m_v(\d+)$")


def test_versions_are_complete_ones_in_numeric_order(tmp_path):
    assert model_versions(tmp_path / "none", PATTERN) == []
    assert next_model_version(tmp_path, PATTERN, "m_v") == "m_v1"
    for n in (1, 2, 9, 10):
        (tmp_path / f"m_v{n}").mkdir()
        (tmp_path / f"m_v{n}" / "card.json").write_text("{}")
    (tmp_path / "m_v11").mkdir()  # being written: no card yet
    (tmp_path / "other").mkdir()
    assert model_versions(tmp_path, PATTERN) == ["m_v1", "m_v2", "m_v9", "m_v10"]
    assert next_model_version(tmp_path, PATTERN, "m_v") == "m_v11"


def store_with(tmp_path, *cards):
    from loyaltylens_core.sdk.model_versions import ModelStore

    store = ModelStore(tmp_path, PATTERN, "m_v")
    roles = []
    for auc, ece, data in cards:
        version = store.next_version()
        (tmp_path / version).mkdir()
        (tmp_path / version / "card.json").write_text(json.dumps({
            "model_version": version, "training_data_hash": data, "evaluation": {"headline": "test_latest"},
            "metrics": {"test_latest": {"auc": auc, "ece": ece, "brier": 0.2}}}))
        roles.append(store.trained(version))
    return store, roles


def test_the_first_version_is_the_champion_and_later_ones_are_challengers(tmp_path):
    store, roles = store_with(tmp_path, (0.70, 0.03, "d1"), (0.72, 0.02, "d1"))
    assert roles == ["champion", "challenger"]
    assert store.serving() == "m_v1"  # not the newest: the champion
    assert [(r["version"], r["role"], r["auc"]) for r in store.listing()] == [
        ("m_v1", "champion", 0.70), ("m_v2", "challenger", 0.72)]


def test_promote_needs_a_better_challenger_on_the_same_data_or_force(tmp_path):
    store, _ = store_with(tmp_path, (0.70, 0.03, "d1"), (0.69, 0.02, "d1"), (0.75, 0.01, "d2"), (0.71, 0.02, "d1"))
    with pytest.raises(UsageError, match="does not beat the champion m_v1"):
        store.promote("m_v2")  # lower AUC
    with pytest.raises(UsageError, match="evaluated on different data"):
        store.promote("m_v3")
    assert store.promote("m_v4")["previous"] == "m_v1" and store.serving() == "m_v4"
    assert store.promote("m_v3", force=True)["forced"] is True and store.champion() == "m_v3"
    assert store.rollback() == {"champion": "m_v4", "previous": "m_v3"}
    assert store.rollback() == {"champion": "m_v1", "previous": "m_v4"}
    with pytest.raises(UsageError, match="no previous champion"):
        store.rollback()
    with pytest.raises(UsageError, match="'m_v9' not found"):
        store.promote("m_v9")
