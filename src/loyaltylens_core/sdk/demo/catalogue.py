"""A deterministic catalogue of 200 offers whose titles and descriptions agree.

Each category has a few title/description templates filled from small vocabularies, so
that a sentence encoder sees coherent text and the retriever has something real to rank.
"""

from __future__ import annotations

import random
from typing import Any

DEPARTMENTS = ["groceries", "fresh produce", "bakery", "coffee", "beauty", "home goods",
               "electronics", "toys", "pet supplies", "wine and spirits"]
ITEMS = ["coffee", "pastry", "smoothie", "sandwich", "bouquet of flowers", "bottle of wine",
         "cinema ticket", "car wash", "dessert", "travel mug"]
PARTNERS = [("SkyWay Airlines", "flights"), ("Harbor Hotels", "hotel stays"),
            ("RoadRunner Car Rental", "car rentals"), ("FuelMax", "fuel"),
            ("StreamBox", "streaming subscriptions"), ("CityCab", "taxi rides")]
SEASONS = [("Spring", "spring cleaning and garden supplies"), ("Summer", "barbecue and picnic essentials"),
           ("Back to School", "school supplies and lunchbox snacks"), ("Autumn", "cosy home and baking goods"),
           ("Holiday", "gifts, decorations and festive treats"), ("New Year", "healthy eating and fitness gear")]
TIER_UP = [("bronze", "silver"), ("silver", "gold"), ("gold", "platinum")]

CATEGORIES = ["birthday", "points_multiplier", "free_item", "tier_upgrade", "partner",
              "seasonal", "win_back", "app_exclusive", "cashback", "double_stamp"]


def _offer(rng: random.Random, category: str, n: int) -> dict[str, Any]:
    channels = ["in-store", "mobile", "web"]
    tiers = ["bronze", "silver", "gold", "platinum"]
    days = rng.choice([7, 14, 30, 60])
    if category == "birthday":
        item = rng.choice(ITEMS)
        pct = rng.choice([10, 15, 20, 25])
        title = rng.choice([f"Birthday treat: free {item}", f"Happy birthday: {pct}% off your basket"])
        desc = (f"Celebrate your birthday month with us: claim a free {item} on any visit."
                if "free" in title else
                f"A birthday present from us: {pct}% off one full shopping basket during your birthday month.")
        value, threshold = float(pct), rng.uniform(0.0, 0.3)
    elif category == "points_multiplier":
        mult = rng.choice([2, 3, 4, 5])
        dept = rng.choice(DEPARTMENTS)
        title = f"{mult}x points on {dept}"
        desc = f"Earn {mult} times the usual loyalty points on every {dept} purchase for {days} days."
        value, threshold = float(mult * 5), rng.uniform(0.3, 0.7)
    elif category == "free_item":
        item = rng.choice(ITEMS)
        spend = rng.choice([20, 30, 50])
        title = f"Free {item} when you spend ${spend}"
        desc = f"Spend ${spend} or more in one visit and take home a free {item} on us."
        value, threshold = float(spend) / 5, rng.uniform(0.2, 0.6)
    elif category == "tier_upgrade":
        low, high = rng.choice(TIER_UP)
        tiers = [low]
        visits = rng.choice([3, 4, 5, 6])
        title = f"Fast track from {low} to {high}"
        desc = (f"Shop {visits} times in the next {days} days and we will upgrade your {low} membership "
                f"to {high} tier, with all its rewards.")
        value, threshold = 40.0, rng.uniform(0.5, 0.9)
    elif category == "partner":
        partner, what = rng.choice(PARTNERS)
        bonus = rng.choice([500, 1000, 2000])
        title = f"{bonus} bonus points with {partner}"
        desc = f"Book {what} with our partner {partner} and collect {bonus} bonus loyalty points."
        value, threshold = bonus / 100, rng.uniform(0.4, 0.8)
    elif category == "seasonal":
        season, goods = rng.choice(SEASONS)
        pct = rng.choice([10, 15, 20, 30])
        title = f"{season} sale: {pct}% off {goods.split(' and ')[0]}"
        desc = f"Our {season.lower()} event: {pct}% off {goods} for loyalty members, for {days} days."
        value, threshold = float(pct), rng.uniform(0.1, 0.5)
    elif category == "win_back":
        amount = rng.choice([5, 10, 15])
        title = f"We miss you: ${amount} off your next visit"
        desc = (f"It has been a while since your last visit. Come back and take ${amount} off "
                f"your next shop of $40 or more.")
        value, threshold = float(amount), rng.uniform(0.0, 0.2)
    elif category == "app_exclusive":
        channels = ["mobile"]
        dept = rng.choice(DEPARTMENTS)
        pct = rng.choice([10, 15, 20])
        title = f"App exclusive: {pct}% off {dept}"
        desc = f"Only in the mobile app: {pct}% off {dept} when you scan your app card or order in the app."
        value, threshold = float(pct), rng.uniform(0.2, 0.6)
    elif category == "cashback":
        pct = rng.choice([2, 3, 5])
        channels = rng.choice([["web"], ["web", "mobile"]])
        title = f"{pct}% cashback on online orders"
        desc = f"Shop online and get {pct}% of your order back as credit on your loyalty account."
        value, threshold = float(pct * 4), rng.uniform(0.3, 0.7)
    else:  # double_stamp
        channels = ["in-store"]
        dept = rng.choice(DEPARTMENTS)
        title = f"Double stamps on {dept} in store"
        desc = f"Visit any store and collect double stamps on your card for {dept} purchases for {days} days."
        value, threshold = 8.0, rng.uniform(0.1, 0.5)
    return {
        "offer_id": f"OFF{n:03d}",
        "title": title,
        "description": desc,
        "category": category,
        "min_propensity_threshold": round(threshold, 2),
        "tiers": tiers,
        "channels": channels,
        "value": value,
        "valid_days": days,
    }


def _decisioning(offer: dict[str, Any], n: int) -> dict[str, Any]:
    """The rules a marketer would put on such an offer, so the defaults exercise every
    decision path: tier-only and lapsed-customer rules, expired and future offers, per-
    customer and total caps, stock, priorities and an app-only placement. Derived from the
    offer's position, not the random generator, so the offers' text stays what it was."""
    category = offer["category"]
    if category == "win_back":
        offer["eligibility"] = "recency_days >= 14 or frequency_30d <= 2"
        offer["cap_per_customer"] = {"count": 1, "days": 7}
    elif category == "birthday":
        offer["cap_per_customer"] = {"count": 1, "days": 365}
        offer["priority"] = 5
    elif category == "partner" and n % 20 == 5:
        offer["eligibility"] = 'tier in ("gold", "platinum")'
        offer["stock"] = 500
    elif category == "tier_upgrade":
        offer["priority"] = 10
        offer["cap_per_customer"] = {"count": 1, "days": 30}
    elif category == "free_item":
        offer["cap_total"] = 2000
    elif category == "app_exclusive":
        offer["placements"] = ["app-banner"]
    elif category == "seasonal":
        if n % 3 == 0:
            offer["valid_to"] = "2025-01-31"  # last season's: expired
        elif n % 3 == 1:
            offer["valid_from"] = "2099-03-01"  # announced, not yet valid
    return offer


def build_catalogue(seed: int, size: int = 200) -> list[dict[str, Any]]:
    """``size`` offers, spread evenly over the categories, stable for a given seed, with
    decisioning rules on about 60% of them."""
    rng = random.Random(seed)
    return [_decisioning(_offer(rng, CATEGORIES[n % len(CATEGORIES)], n + 1), n + 1) for n in range(size)]
