"""docs/plugins.md is enough to write a plugin: its worked retriever, assembled from the page,
is a working plugin, and it documents every contract field."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

from loyaltylens_core import contracts
from loyaltylens_core.kernel.contracts import RetrievalQuery

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def code_block(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith(marker):
            return block
    raise AssertionError(f"no python block starting with {marker!r} in {DOC}")


@pytest.fixture
def acme(tmp_path, monkeypatch):
    package = tmp_path / "src" / "loyaltylens_acme"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(code_block("# src/loyaltylens_acme/__init__.py"))
    (package / "retriever.py").write_text(code_block("# src/loyaltylens_acme/retriever.py"))
    monkeypatch.syspath_prepend(str(package.parent))
    yield importlib.import_module("loyaltylens_acme")
    for name in [m for m in sys.modules if m.startswith("loyaltylens_acme")]:
        del sys.modules[name]


def test_the_worked_retriever_is_a_working_plugin(acme, loyaltylens_pipeline, tmp_path, monkeypatch):
    catalogue = tmp_path / "offers.json"
    catalogue.write_text(json.dumps([
        {"offer_id": "A", "title": "Free coffee", "description": "a free coffee", "category": "free_item",
         "min_propensity_threshold": 0.1},
        {"offer_id": "B", "title": "Triple points", "description": "triple points", "category": "points",
         "min_propensity_threshold": 0.9, "tiers": ["platinum"]},
        {"offer_id": "C", "title": "Coffee points", "description": "points on coffee", "category": "points",
         "min_propensity_threshold": 0.2},
    ]))
    monkeypatch.setenv("LOYALTYLENS_RETRIEVER_ACME__CATALOGUE", str(catalogue))
    pipeline = loyaltylens_pipeline(extra_plugins=[acme], use=["retriever=acme"])
    assert {"Preparable", "Indexable", "BatchRetriever"} <= pipeline.capabilities("retriever")
    result = pipeline.run("C001")
    assert result.top_offer is not None and [c.rank for c in result.candidates] == [1, 2]  # B needs 0.9
    retriever = pipeline.component("retriever")
    found = retriever.retrieve(RetrievalQuery(customer_id="C001", text="free coffee", k=3, max_threshold=None,
                                              tier="gold"))
    assert [c.offer.offer_id for c in found][0] == "A" and "B" not in [c.offer.offer_id for c in found]
    assert retriever.index() == 3 and retriever.last_index["embedded"] == 0  # unchanged: vectors reused
    assert retriever.index(rebuild=True) == 3 and retriever.last_index["embedded"] == 3


@pytest.mark.parametrize("model", [
    contracts.CustomerFeatures, contracts.PropensityScore, contracts.Offer, contracts.RetrievalQuery,
    contracts.OfferCandidate, contracts.GeneratedCopy, contracts.PipelineResult, contracts.TrainingSet,
])
def test_every_contract_field_is_documented(model):
    text = DOC.read_text()
    section = text[text.index(f"**{model.__name__}**"):]
    section = section[: section.index("\n\n**", 1) if "\n\n**" in section[1:] else len(section)]
    for name, field in model.model_fields.items():
        shown = field.alias or name
        assert f"`{shown}`" in section, f"{model.__name__}.{shown} is not in docs/plugins.md"


def test_every_capability_is_documented():
    text = DOC.read_text()
    for name in contracts.CAPABILITIES:
        assert f"`{name}`" in text, name
