from __future__ import annotations

import pytest

from loyaltylens_core.kernel.adapters import template_variables
from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakePropensity, make_features
from loyaltylens_generator_template import TemplateGeneratorSettings, build
from loyaltylens_generator_template.generator import BUILTIN


def variables(offer=FAKE_OFFERS[0], **features):
    f = make_features(**features)
    return template_variables(f, FakePropensity(0.7).predict(f), offer)


def test_builtin_templates_fill_every_field():
    copy = build(TemplateGeneratorSettings(), None).generate(variables(channel_preference="web"))
    assert copy.headline == "Gold member exclusive: Free coffee"
    assert copy.cta == "Claim it online"
    assert copy.prompt_version == "template-v1"
    assert "{" not in copy.headline + copy.body + copy.cta


def test_category_templates_are_used():
    birthday = FAKE_OFFERS[0].model_copy(update={"category": "birthday"})
    copy = build(TemplateGeneratorSettings(), None).generate(variables(birthday))
    assert copy.headline.startswith("Happy birthday")


def test_a_batch_gets_the_same_copy_as_one_call_per_customer():
    gen = build(TemplateGeneratorSettings(), None)
    many = [variables(FAKE_OFFERS[i % 2], channel_preference=channel) for i, channel in enumerate(["web", "mobile", "in-store"])]
    assert gen.generate_many(many) == [gen.generate(v) for v in many]
    assert gen.generate_many([]) == []


def test_every_builtin_category_renders():
    gen = build(TemplateGeneratorSettings(), None)
    for category in BUILTIN["v1"]:
        offer = FAKE_OFFERS[1].model_copy(update={"category": category})
        copy = gen.generate(variables(offer))
        assert copy.headline and copy.body and copy.cta


def test_user_template_file_with_new_version(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[v2.default]\nheadline = "Hi {tier_title}"\nbody = "{offer_description}"\ncta = "Go"\n')
    copy = build(TemplateGeneratorSettings(version="v2", templates=path), None).generate(variables())
    assert copy.headline == "Hi Gold" and copy.prompt_version == "template-v2"


@pytest.mark.parametrize("text, message", [
    ('[v2.default]\nheadline = "Hi {first_name}"\nbody = "b"\ncta = "c"\n', r"\{first_name\}, which the adapter cannot fill"),
    ('[v2.default]\nheadline = "Hi"\nbody = "b"\n', "lacks cta"),
    ('[v2.birthday]\nheadline = "a"\nbody = "b"\ncta = "c"\n', "no \\[default\\]"),
    ("[v2\n", "not valid TOML"),
])
def test_bad_templates_fail_at_load_time(tmp_path, text, message):
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build(TemplateGeneratorSettings(version="v2", templates=path), None)


def test_unknown_version():
    with pytest.raises(ConfigError, match="no template set 'v9'.*available: v1"):
        build(TemplateGeneratorSettings(version="v9"), None)
