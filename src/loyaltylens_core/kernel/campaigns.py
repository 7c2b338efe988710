"""Campaigns: ``[campaigns.NAME]`` in loyaltylens.toml says who gets an offer, when, where
it is sent, and who is held out so the campaign's lift can be measured.

    [campaigns.gold-monthly]
    audience = 'tier == "gold"'          # a rule over the features (the eligibility language)
    # audience_ids = "gold.txt"          # or an ids file, one customer id per line
    placement = "default"                # the [placements.NAME] it decides for
    categories = ["points_multiplier"]   # offer collection: categories and/or offer_ids
    channels = ["email", "push"]         # one export per channel
    start = 2026-12-01                   # UTC days, both inclusive; either may be left out
    end = 2026-12-31
    holdout = 0.1                        # share held out, by hash of (campaign, customer)
    frequency = { group = "newsletter", days = 7 }  # one campaign of the group per 7 days

This module is the campaign as configured and its pure decisions (active on a day, a
customer's arm and channel, the placement it decides for); ``campaign/runner.py`` runs one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Literal

from loyaltylens_core.kernel.contracts import FEATURE_NAMES, CustomerFeatures, Frequency, Placement, feature_values
from loyaltylens_core.kernel.errors import ConfigError
from loyaltylens_core.kernel.expressions import ExpressionError, parse
from loyaltylens_core.kernel.registry import suggest

CHANNELS: tuple[str, ...] = ("email", "push", "sms", "app")
Arm = Literal["treated", "holdout"]
# What an audience rule may name: the customer's features (no score: it is not computed yet).
AUDIENCE_NAMES = FEATURE_NAMES
# The channel a customer with several to choose from is sent on, by channel_preference.
PREFERRED_CHANNELS: dict[str, tuple[str, ...]] = {
    "mobile": ("push", "app", "sms", "email"), "web": ("email", "app", "push", "sms"),
    "in-store": ("sms", "email", "push", "app"),
}
KEYS = ("description", "audience", "audience_ids", "placement", "categories", "offer_ids", "channels", "channel",
        "start", "end", "holdout", "frequency")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The key a campaign's placement goes by where only a name travels (batch engine workers).
PLACEMENT_PREFIX = "campaign:"
# variants-map keys of a campaign's impressions: its arm, its channel, its run.
LABEL_PREFIX = "campaign:"
ARM_KEY, CHANNEL_KEY, RUN_KEY = LABEL_PREFIX + "{}", LABEL_PREFIX + "{}:channel", LABEL_PREFIX + "{}:run"
DEMO_CAMPAIGN = "gold-monthly"


@dataclasses.dataclass(frozen=True)
class Campaign:
    name: str
    audience: str | None = None
    audience_ids: Path | None = None
    placement: str = "default"
    categories: tuple[str, ...] | None = None
    offer_ids: tuple[str, ...] | None = None
    channels: tuple[str, ...] = ("email",)
    start: dt.date | None = None
    end: dt.date | None = None
    holdout: float = 0.0
    frequency: tuple[str, int] | None = None  # (group, days)
    description: str = ""
    source: str = "default"

    def active_on(self, day: dt.date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    def window(self) -> str:
        return f"{self.start or '…'} .. {self.end or '…'}"

    def arm(self, customer_id: str) -> Arm:
        """Holdout or treated: a point in [0, 1) from SHA-256 of (campaign, id), the same
        in every process and independent of every experiment's split."""
        digest = hashlib.sha256(f"campaign\x00{self.name}\x00{customer_id}".encode()).digest()
        return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < self.holdout else "treated"

    def channel_for(self, channel_preference: str) -> str:
        """The one channel a customer is sent on: the campaign's only one, or the first of
        theirs (PREFERRED_CHANNELS) the campaign uses."""
        if len(self.channels) == 1:
            return self.channels[0]
        return next(c for c in PREFERRED_CHANNELS.get(channel_preference, CHANNELS) + self.channels
                    if c in self.channels)

    def selects(self) -> Callable[[CustomerFeatures], bool]:
        """The audience rule as a test on a customer's features (no rule: everyone)."""
        if self.audience is None:
            return lambda features: True
        rule = parse(self.audience, AUDIENCE_NAMES, "bool").evaluate
        return lambda features: bool(rule(feature_values(features)))

    def placement_in(self, base: Placement, run: str = "", preview: bool = False) -> Placement:
        """The configured placement narrowed to this campaign: its offer collection, its
        frequency rule counted under ``run``, and whether this is a dry run."""
        frequency = Frequency(group=self.frequency[0], days=self.frequency[1], run=run) if self.frequency else None
        return base.model_copy(update={
            "offer_ids": self.offer_ids if self.offer_ids is not None else base.offer_ids,
            "categories": self.categories if self.categories is not None else base.categories,
            "frequency": frequency or base.frequency, "preview": preview,
        })

    def placement_key(self, run: str) -> str:
        """``campaign:NAME@RUN``: what a batch engine's worker resolves to this placement."""
        return f"{PLACEMENT_PREFIX}{self.name}@{run}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "audience": self.audience, "audience_ids": str(self.audience_ids) if self.audience_ids else None,
            "placement": self.placement, "categories": list(self.categories) if self.categories is not None else None,
            "offer_ids": list(self.offer_ids) if self.offer_ids is not None else None,
            "channels": list(self.channels), "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None, "holdout": self.holdout,
            "frequency": {"group": self.frequency[0], "days": self.frequency[1]} if self.frequency else None,
        }


def demo_campaign() -> Campaign:
    """The campaign a fresh install lists and runs: Gold members, a 10% holdout, sent by
    email or push, at most one "monthly" campaign per 28 days."""
    return Campaign(
        name=DEMO_CAMPAIGN, audience='tier == "gold"', channels=("email", "push"), holdout=0.1,
        frequency=("monthly", 28), description="Gold members' monthly offer (the demo campaign)", source="built-in",
    )


def parse_campaigns(raw: Any, source: str, base_dir: Path | None) -> dict[str, Campaign]:
    """``[campaigns.NAME]`` tables, each checked now, naming the table and key on error.
    A relative ``audience_ids`` is relative to the config file's folder."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{source}: 'campaigns' must hold one table per campaign",
                          f"write e.g. [campaigns.{DEMO_CAMPAIGN}] with audience = 'tier == \"gold\"'")
    return {name: _campaign(name, table, f"{source}: [campaigns.{name}]", source, base_dir)
            for name, table in raw.items()}


def _campaign(name: str, table: dict[str, Any], where: str, source: str, base_dir: Path | None) -> Campaign:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: campaign names are 1-64 lowercase letters, digits, '-' or '_'",
                          "rename the table, e.g. [campaigns.gold-monthly]")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where} has no key {unknown[0]!r}", f"keys are: {', '.join(KEYS)}{suggest(unknown[0], KEYS)}")
    audience = _text(table, "audience", where)
    if audience is not None:
        try:
            parse(audience, AUDIENCE_NAMES, "bool")
        except ExpressionError as exc:
            raise ConfigError(f"{where} audience: {exc}", "a rule over the features, e.g. 'tier == \"gold\"'") from None
    ids = _text(table, "audience_ids", where)
    ids_path = None
    if ids is not None:
        ids_path = Path(ids) if Path(ids).is_absolute() or base_dir is None else base_dir / ids
    if "channel" in table and "channels" in table:
        raise ConfigError(f"{where} has both channel and channels", "keep one")
    channels = _strings(table, "channels", where) or (_text(table, "channel", where) or "email",)
    for channel in channels:
        if channel not in CHANNELS:
            raise ConfigError(f"{where} channel {channel!r} is not one of {', '.join(CHANNELS)}",
                              f"pick from {', '.join(CHANNELS)}{suggest(channel, CHANNELS)}")
    start, end = _day(table, "start", where), _day(table, "end", where)
    if start and end and end < start:
        raise ConfigError(f"{where} ends ({end}) before it starts ({start})", "swap start and end")
    holdout = table.get("holdout", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ConfigError(f"{where} holdout must be a share from 0 to below 1", "e.g. holdout = 0.1 (10% held out)")
    return Campaign(
        name=name, audience=audience, audience_ids=ids_path, placement=_text(table, "placement", where) or "default",
        categories=_strings(table, "categories", where), offer_ids=_strings(table, "offer_ids", where),
        channels=tuple(dict.fromkeys(channels)), start=start, end=end, holdout=float(holdout),
        frequency=_frequency(table.get("frequency"), where), description=_text(table, "description", where) or "",
        source=source,
    )


def _text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where} {key} must be a non-empty string", "")
    return value.strip() if isinstance(value, str) else None


def _strings(table: dict[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} {key} must be a list of non-empty strings", f'e.g. {key} = ["a", "b"]')
    return tuple(v.strip() for v in value)


def _day(table: dict[str, Any], key: str, where: str) -> dt.date | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where} {key} must be a date", f"e.g. {key} = 2026-12-01 (a UTC day, inclusive)")


def _frequency(value: Any, where: str) -> tuple[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"group", "days"}:
        raise ConfigError(f"{where} frequency must be {{ group = NAME, days = N }}",
                          'e.g. frequency = { group = "newsletter", days = 7 }')
    group, days = value["group"], value["days"]
    if not isinstance(group, str) or not group.strip():
        raise ConfigError(f"{where} frequency group must be a non-empty string", "")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
        raise ConfigError(f"{where} frequency days must be a whole number of days from 1 to 3660", "e.g. days = 7")
    return group.strip(), days
