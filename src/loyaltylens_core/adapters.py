"""How one stage's output becomes the next stage's input, declared in one place.

The reference implementation mapped keys by hand in three places (``title`` ->
``offer_title``, ``channel_preference`` -> ``channel``) and rendered unknown template
placeholders as literal text. Here every variable a prompt or template may use is a row
of ``TEMPLATE_VARIABLES``; a template naming anything else fails when it is loaded.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable

from .contracts import CustomerFeatures, Offer, PropensityScore, RetrievalQuery
from .errors import ConfigError


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

# variable name -> how to compute it. This table is the adapter.
TEMPLATE_VARIABLES: dict[str, Callable[[GenerationInputs], Any]] = {
    "customer_id": lambda i: i.features.customer_id,
    "tier": lambda i: i.features.tier,
    "tier_title": lambda i: i.features.tier.title(),
    "channel": lambda i: i.features.channel_preference,
    "channel_phrase": lambda i: CHANNEL_PHRASES[i.features.channel_preference],
    "recency_days": lambda i: round(i.features.recency_days),
    "frequency_30d": lambda i: i.features.frequency_30d,
    "monetary_90d": lambda i: f"{i.features.monetary_90d:.2f}",
    "propensity_score": lambda i: f"{i.propensity.score:.2f}",
    "offer_id": lambda i: i.offer.offer_id,
    "offer_title": lambda i: i.offer.title,
    "offer_description": lambda i: i.offer.description,
    "offer_category": lambda i: i.offer.category,
    "offer_category_label": lambda i: i.offer.category.replace("_", " "),
    "offer_value": lambda i: f"{i.offer.value:g}",
    "offer_valid_days": lambda i: i.offer.valid_days,
}


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
    """Fail at load time when a template names a variable the adapter cannot fill."""
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


def render(template: str, variables: dict[str, Any]) -> str:
    return template.format_map(variables)


def _frequency_phrase(n: int) -> str:
    if n == 0:
        return "has made no purchases in the last month"
    if n <= 2:
        return "made one or two purchases in the last month"
    if n <= 5:
        return "made several purchases in the last month"
    return "shops very often"


def _recency_phrase(days: float) -> str:
    if days <= 7:
        return "shopped this week"
    if days <= 30:
        return "shopped this month"
    if days <= 90:
        return "has not shopped for over a month and may be drifting away"
    return "has not shopped for months and is at risk of lapsing"


def _engagement_phrase(score: float) -> str:
    if score >= 0.66:
        return "is highly engaged with the programme"
    if score >= 0.33:
        return "is moderately engaged"
    return "rarely engages with the programme"


def _redemption_phrase(rate: float) -> str:
    if rate >= 0.5:
        return "redeems most offers"
    if rate >= 0.2:
        return "redeems some offers"
    return "seldom redeems offers"


def query_text(features: CustomerFeatures) -> str:
    """A natural-language description of the customer for a sentence encoder.

    The reference sent ``key=value`` pairs, which mean little to an encoder trained on
    sentences; this says the same facts in words the offer descriptions also use. Facts
    are bucketed into phrases on purpose: customers alike get the same text, so an
    embedder can cache it and a batch embeds a few thousand texts, not one per customer.
    """
    spend = features.monetary_90d
    spend_phrase = (
        "a big spender" if spend >= 500 else "a regular spender" if spend >= 100 else "a light spender"
    )
    return (
        f"A {features.tier} tier loyalty member who prefers shopping "
        f"{CHANNEL_PHRASES[features.channel_preference]}, "
        f"{_recency_phrase(features.recency_days)}, "
        f"{_frequency_phrase(features.frequency_30d)}, is {spend_phrase}, "
        f"{_redemption_phrase(features.offer_redemption_rate)} and "
        f"{_engagement_phrase(features.engagement_score)}."
    )


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
