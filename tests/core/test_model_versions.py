"""Numbered model versions shared by the propensity plugins."""

from __future__ import annotations

import re

from loyaltylens_core.model_versions import model_versions, next_model_version

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
