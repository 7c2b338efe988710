"""How one stage's output becomes the next stage's input, declared in one place.

The reference implementation mapped keys by hand in three places (``title`` ->
``offer_title``, ``channel_preference`` -> ``channel``) and rendered unknown template
placeholders as literal text. Here every variable a prompt or template may use is a row
of ``TEMPLATE_VARIABLES``; a template naming anything else fails when it is loaded.
"""

from __future__ import annotations

import dataclasses
import itertools
import string
from typing import Any, Callable

from loyaltylens_core.kernel.contracts import TIERS, CustomerFeatures, Offer, PropensityScore, RetrievalQuery
from loyaltylens_core.kernel.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GenerationInputs:
    """Everything the generator stage may draw on for one customer."""

    features: CustomerFeatures
    propensity: PropensityScore
    offer: Offer


CHANNEL_PHRASES: dict[str, str] = {
    "in-store": "in store",
    "mobile": "in the app",
    "web": "online",
}

class Shown(float):
    """A number a template can format: ``{propensity_score:.0%}`` formats the number
    itself, while a bare ``{propensity_score}`` prints it the way the reference copy did
    ("0.34", "320.50", "10"). It is a ``float`` everywhere else (arithmetic, comparisons,
    ``json.dumps``), so a generator gets a typed value, not a pre-formatted string."""

    default_spec: str

    def __new__(cls, value: float, default_spec: str) -> "Shown":
        number = super().__new__(cls, value)
        number.default_spec = default_spec
        return number

    def __format__(self, spec: str) -> str:
        return float.__format__(self, spec or self.default_spec)

    def __str__(self) -> str:
        return format(self, "")


@dataclasses.dataclass(frozen=True)
class TemplateVariable:
    """One variable a prompt or template may use: its type, an example, where it comes from."""

    compute: Callable[[GenerationInputs], Any]
    type: type
    example: Any
    meaning: str


# variable name -> how to compute it. This table is the adapter (docs/plugins.md lists it).
VARIABLES: dict[str, TemplateVariable] = {
    "customer_id": TemplateVariable(lambda i: i.features.customer_id, str, "C001", "CustomerFeatures.customer_id"),
    "tier": TemplateVariable(lambda i: i.features.tier, str, "gold", "CustomerFeatures.tier"),
    "tier_title": TemplateVariable(lambda i: i.features.tier.title(), str, "Gold", "the tier, capitalised"),
    "channel": TemplateVariable(lambda i: i.features.channel_preference, str, "mobile",
                                "CustomerFeatures.channel_preference"),
    "channel_phrase": TemplateVariable(lambda i: CHANNEL_PHRASES[i.features.channel_preference], str, "in the app",
                                       "the channel as words: in store / in the app / online"),
    "recency_days": TemplateVariable(lambda i: round(i.features.recency_days), int, 3,
                                     "CustomerFeatures.recency_days, rounded to whole days"),
    "frequency_30d": TemplateVariable(lambda i: i.features.frequency_30d, int, 4, "CustomerFeatures.frequency_30d"),
    "monetary_90d": TemplateVariable(lambda i: Shown(i.features.monetary_90d, ".2f"), float, Shown(320.5, ".2f"),
                                     "CustomerFeatures.monetary_90d; bare, two decimals (320.50)"),
    "propensity_score": TemplateVariable(lambda i: Shown(i.propensity.score, ".2f"), float, Shown(0.34, ".2f"),
                                         "PropensityScore.score, 0 to 1; bare, two decimals (0.34)"),
    "offer_id": TemplateVariable(lambda i: i.offer.offer_id, str, "O001", "Offer.offer_id"),
    "offer_title": TemplateVariable(lambda i: i.offer.title, str, "Double points weekend", "Offer.title"),
    "offer_description": TemplateVariable(lambda i: i.offer.description, str,
                                          "Earn double points on every purchase this weekend.", "Offer.description"),
    "offer_category": TemplateVariable(lambda i: i.offer.category, str, "points_multiplier", "Offer.category"),
    "offer_category_label": TemplateVariable(lambda i: i.offer.category.replace("_", " "), str, "points multiplier",
                                             "the category with spaces"),
    "offer_value": TemplateVariable(lambda i: Shown(i.offer.value, "g"), float, Shown(10.0, "g"),
                                    "Offer.value; bare, shortest form (10, 12.5)"),
    "offer_valid_days": TemplateVariable(lambda i: i.offer.valid_days, int, 14, "Offer.valid_days"),
}
# The computations alone, by name (what generators and older code look up).
TEMPLATE_VARIABLES: dict[str, Callable[[GenerationInputs], Any]] = {n: v.compute for n, v in VARIABLES.items()}
EXAMPLE_VARIABLES: dict[str, Any] = {n: v.example for n, v in VARIABLES.items()}


def template_variables(
    features: CustomerFeatures, propensity: PropensityScore, offer: Offer
) -> dict[str, Any]:
    """All adapter variables for one customer and offer."""
    inputs = GenerationInputs(features, propensity, offer)
    return {name: compute(inputs) for name, compute in TEMPLATE_VARIABLES.items()}


def placeholders(template: str) -> set[str]:
    """The variable names a ``str.format`` template refers to."""
    names: set[str] = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ConfigError(
                f"template {template[:40]!r}... uses a positional placeholder",
                "name every placeholder, e.g. {offer_title}",
            )
        names.add(root)
    return names


def check_template(template: str, where: str) -> None:
    """Fail at load time when a template names a variable the adapter cannot fill, or
    formats one in a way its type does not allow (``{offer_title:.0%}``, ``{tier.x}``):
    the template is rendered once against example values of every variable's type."""
    try:
        names = placeholders(template)
    except ValueError as exc:
        raise ConfigError(f"template {where} is malformed: {exc}", "check its braces") from None
    unknown = sorted(names - set(TEMPLATE_VARIABLES))
    if unknown:
        raise ConfigError(
            f"template {where} uses {{{unknown[0]}}}, which the adapter cannot fill",
            f"available variables: {', '.join(sorted(TEMPLATE_VARIABLES))}",
        )
    try:
        render(template, EXAMPLE_VARIABLES)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ConfigError(
            f"template {where} cannot be rendered: {type(exc).__name__}: {exc}",
            "check each {name:spec} against the variable's type (docs/plugins.md, Template variables)",
        ) from None


def render(template: str, variables: dict[str, Any]) -> str:
    return template.format_map(variables)


# The customer description is built from bucketed phrases. Each table lists its buckets
# in the order they are tried; the first bound the value satisfies picks the phrase.
INF = float("inf")
RECENCY_PHRASES: tuple[tuple[float, str], ...] = (  # days since last purchase, at most
    (7, "shopped this week"),
    (30, "shopped this month"),
    (90, "has not shopped for over a month and may be drifting away"),
    (INF, "has not shopped for months and is at risk of lapsing"),
)
FREQUENCY_PHRASES: tuple[tuple[float, str], ...] = (  # purchases in 30 days, at most
    (0, "has made no purchases in the last month"),
    (2, "made one or two purchases in the last month"),
    (5, "made several purchases in the last month"),
    (INF, "shops very often"),
)
SPEND_PHRASES: tuple[tuple[float, str], ...] = (  # spend in 90 days, at least
    (500, "a big spender"),
    (100, "a regular spender"),
    (-INF, "a light spender"),
)
REDEMPTION_PHRASES: tuple[tuple[float, str], ...] = (  # redemption rate, at least
    (0.5, "redeems most offers"),
    (0.2, "redeems some offers"),
    (-INF, "seldom redeems offers"),
)
ENGAGEMENT_PHRASES: tuple[tuple[float, str], ...] = (  # engagement score, at least
    (0.66, "is highly engaged with the programme"),
    (0.33, "is moderately engaged"),
    (-INF, "rarely engages with the programme"),
)


def _at_most(value: float, table: tuple[tuple[float, str], ...]) -> str:
    for bound, phrase in table:  # a plain loop: a batch calls this five times per customer
        if value <= bound:
            return phrase
    raise ValueError(f"{value} is above every bound")


def _at_least(value: float, table: tuple[tuple[float, str], ...]) -> str:
    for bound, phrase in table:
        if value >= bound:
            return phrase
    raise ValueError(f"{value} is below every bound")


def _describe(tier: str, channel: str, recency: str, frequency: str, spend: str,
              redemption: str, engagement: str) -> str:
    return (
        f"A {tier} tier loyalty member who prefers shopping {CHANNEL_PHRASES[channel]}, "
        f"{recency}, {frequency}, is {spend}, {redemption} and {engagement}."
    )


def query_text(features: CustomerFeatures) -> str:
    """A natural-language description of the customer for a sentence encoder.

    The reference sent ``key=value`` pairs, which mean little to an encoder trained on
    sentences; this says the same facts in words the offer descriptions also use. Facts
    are bucketed into phrases on purpose: customers alike get the same text, and the set
    of all texts is finite (see ``query_vocabulary``), so a retriever can embed every
    one of them at index time and a run never calls the encoder.
    """
    return _describe(
        features.tier,
        features.channel_preference,
        _at_most(features.recency_days, RECENCY_PHRASES),
        _at_most(features.frequency_30d, FREQUENCY_PHRASES),
        _at_least(features.monetary_90d, SPEND_PHRASES),
        _at_least(features.offer_redemption_rate, REDEMPTION_PHRASES),
        _at_least(features.engagement_score, ENGAGEMENT_PHRASES),
    )


def query_vocabulary() -> tuple[str, ...] | None:
    """Every text ``query_text`` can return (4 tiers x 3 channels x 4 x 4 x 3 x 3 x 3 =
    5,184), or ``None`` for a query builder whose texts are open-ended.

    This is the adapter's optional *finite vocabulary* capability: a retriever that finds
    a vocabulary here may embed all of it when it indexes (stored beside the offer vectors,
    invalidated with them), so no run needs the embedding model. A retriever must still
    embed a text it does not find, since the vocabulary may change between index and run.
    """
    phrases = [
        [tier for tier in TIERS],
        list(CHANNEL_PHRASES),
        *([phrase for _, phrase in table] for table in (
            RECENCY_PHRASES, FREQUENCY_PHRASES, SPEND_PHRASES, REDEMPTION_PHRASES, ENGAGEMENT_PHRASES
        )),
    ]
    return tuple(_describe(*combo) for combo in itertools.product(*phrases))


def retrieval_query(
    features: CustomerFeatures, propensity: PropensityScore, k: int, *, filtered: bool = True
) -> RetrievalQuery:
    """Features + score -> the retriever's input: text, k, and the threshold filter."""
    return RetrievalQuery(
        customer_id=features.customer_id,
        text=query_text(features),
        k=k,
        max_threshold=propensity.score if filtered else None,
        tier=features.tier,
    )
