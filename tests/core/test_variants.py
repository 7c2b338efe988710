"""Parsing a traffic split and choosing each variant's model version."""

from __future__ import annotations

import json
import re

import pytest

from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.sdk.model_versions import ModelStore
from loyaltylens_core.sdk.variants import check_weights, parse_weights, resolve_versions


def test_weights_parse_and_bad_ones_say_what_to_write():
    assert parse_weights("champion=90, challenger=10") == {"champion": 90.0, "challenger": 10.0}
    for text, message in (("champion=90", "at least two variants"), ("champion=90,challenger", "NAME=WEIGHT"),
                          ("a=1,a=2", "given twice"), ("a=-1,b=2", "0 or more"), ("a=0,b=0", "weight 0")):
        with pytest.raises(UsageError, match=message) as info:
            parse_weights(text)
        assert "--variants champion=90,challenger=10" in info.value.hint
    assert parse_weights("champion=100", at_least=1) == {"champion": 100.0}


def store(tmp_path, *versions, champion=None):
    for version in versions:
        (tmp_path / version).mkdir()
        (tmp_path / version / "card.json").write_text("{}")
    if champion:
        (tmp_path / "champion.json").write_text(json.dumps({"champion": champion, "history": []}))
    return ModelStore(tmp_path, re.compile(r"^m_v(\d+)$"), "m_v")


def test_champion_challenger_and_named_versions(tmp_path):
    models = store(tmp_path, "m_v1", "m_v2", "m_v3", champion="m_v2")
    assert resolve_versions(models, ["champion", "challenger"]) == {"champion": "m_v2", "challenger": "m_v3"}
    assert resolve_versions(models, ["m_v1", "champion"]) == {"m_v1": "m_v1", "champion": "m_v2"}
    with pytest.raises(UsageError, match="'m_v9' is neither.*versions: m_v1, m_v2, m_v3"):
        resolve_versions(models, ["champion", "m_v9"])
    with pytest.raises(UsageError, match="the same version"):
        resolve_versions(models, ["champion", "m_v2"])


def test_no_challenger_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="there is no challenger"):
        resolve_versions(store(tmp_path, "m_v1", champion="m_v1"), ["champion", "challenger"])


def test_weights_for_a_running_endpoint_name_its_variants():
    assert check_weights({"propensity_v3": 5}, ["champion", "propensity-v3"]) == {"propensity-v3": 5}
    with pytest.raises(UsageError, match="no variant 'nope'.*champion"):
        check_weights({"nope": 1}, ["champion"])
