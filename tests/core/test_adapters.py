from __future__ import annotations

import pytest

from loyaltylens_core.kernel import adapters
from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakePropensity, make_features


def test_adapter_maps_offer_title_and_channel_preference():
    features = make_features(channel_preference="web")
    variables = adapters.template_variables(features, FakePropensity(0.7).predict(features), FAKE_OFFERS[0])
    assert variables["offer_title"] == "Free coffee"
    assert variables["channel"] == "web"
    assert variables["channel_phrase"] == "online"


def test_unknown_placeholder_fails_at_load_time():
    with pytest.raises(ConfigError, match=r"uses \{offer_name\}, which the adapter cannot fill"):
        adapters.check_template("Hi {tier}, try {offer_name}", "headline v1")


def test_positional_and_malformed_placeholders_fail():
    with pytest.raises(ConfigError, match="positional"):
        adapters.check_template("Hi {}", "x")
    with pytest.raises(ConfigError, match="malformed"):
        adapters.check_template("Hi {tier", "x")


def test_known_placeholders_with_format_specs_pass():
    adapters.check_template("{offer_title!s:>10} for {tier_title}", "ok")


def test_query_text_reads_like_a_sentence():
    text = adapters.query_text(make_features(recency_days=60, frequency_30d=0, tier="bronze"))
    assert text.startswith("A bronze tier loyalty member")
    assert "drifting away" in text and "no purchases" in text


def test_similar_customers_share_one_query_text():
    a = adapters.query_text(make_features("C1", recency_days=40, monetary_90d=120))
    b = adapters.query_text(make_features("C2", recency_days=55, monetary_90d=180))
    assert a == b


def test_template_variables_are_typed_and_print_as_the_reference_did():
    from loyaltylens_core.kernel import adapters

    values = adapters.EXAMPLE_VARIABLES
    assert isinstance(values["propensity_score"], float) and isinstance(values["offer_valid_days"], int)
    assert adapters.render("{propensity_score} {propensity_score:.0%} {offer_value}", values) == "0.34 34% 10"
    assert set(adapters.VARIABLES) == set(adapters.TEMPLATE_VARIABLES) and len(adapters.VARIABLES) == 16


def test_a_format_spec_that_cannot_fit_its_variable_fails_at_load():
    from loyaltylens_core.kernel import adapters
    from loyaltylens_core.kernel.errors import ConfigError

    adapters.check_template("{propensity_score:.0%} off {offer_title}", "ok")
    with pytest.raises(ConfigError, match="cannot be rendered"):
        adapters.check_template("{offer_title:.0%}", "bad")


def test_docs_list_every_template_variable_with_its_type():
    from pathlib import Path

    from loyaltylens_core.kernel import adapters

    text = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    for name, variable in adapters.VARIABLES.items():
        assert f"| `{name}` | `{variable.type.__name__}` |" in text
