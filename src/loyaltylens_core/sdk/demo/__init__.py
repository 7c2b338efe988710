"""Deterministic synthetic loyalty data: customers, transactions, offer events, catalogue.

It stands in for a retailer's data so that ``loyaltylens run C001`` works on a fresh
machine. Behaviour is driven by hidden traits (activity, churn, responsiveness) that the
features only partly reveal, and the training label is a *future* event, so a model
trained on it has something real, and not trivially easy, to learn.

Files are written into a temporary directory and renamed into place at the end: an
interrupted build never leaves a half-written dataset behind.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from loyaltylens_core.kernel.context import StageContext
from loyaltylens_core.util.progress import QUIET, Progress
from loyaltylens_core.sdk.demo.catalogue import build_catalogue

if TYPE_CHECKING:
    from loyaltylens_core.kernel.config import CoreSettings

DATA_VERSION = "3"  # 2: truth.npz (the hidden redemption model) for oracle metrics; 3: decisioning rules
START_DATE = dt.date(2026, 1, 1)
DAYS = 180
DEFAULT_CUSTOMERS = 5000
OFFER_EVERY_DAYS = 14
# The planted drift (demo_drift = true): a competitor opens and from this day on customers
# shop DRIFT_ACTIVITY as often, so the last snapshot's frequency, recency, spend and score
# have moved (`loyaltylens monitor` flags them). Thinned with a random stream of its own: the
# data without drift is byte for byte what it always was.
DRIFT_FROM_DAY = 150
DRIFT_ACTIVITY = 0.5

TIERS = ["bronze", "silver", "gold", "platinum"]
TIER_P = [0.5, 0.3, 0.15, 0.05]
TIER_ACTIVITY = [0.7, 1.0, 1.4, 2.0]
CHANNELS = ["in-store", "mobile", "web"]
CHANNEL_P = [0.4, 0.35, 0.25]


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Where the demo dataset lives and what period it covers."""

    directory: Path
    seed: int
    start_date: dt.date
    end_date: dt.date
    customers: int
    content_hash: str

    @property
    def customers_csv(self) -> Path:
        return self.directory / "customers.csv"

    @property
    def transactions_csv(self) -> Path:
        return self.directory / "transactions.csv"

    @property
    def offer_events_csv(self) -> Path:
        return self.directory / "offer_events.csv"

    @property
    def offers_json(self) -> Path:
        return self.directory / "offers.json"


def customer_id(n: int) -> str:
    """1 -> C001, 5000 -> C5000: the ids the README uses."""
    return f"C{n:03d}"


def load_offers(demo: DemoData) -> list[dict[str, Any]]:
    offers: list[dict[str, Any]] = json.loads(demo.offers_json.read_text())
    return offers


def ensure_demo_data(
    directory: Path,
    *,
    seed: int = 42,
    customers: int = DEFAULT_CUSTOMERS,
    progress: Progress = QUIET,
    rebuild: bool = False,
    drift: bool = False,
) -> DemoData:
    """The dataset in ``directory``, built first if missing, stale or ``rebuild``."""
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file() and not rebuild:
        manifest = json.loads(manifest_path.read_text())
        if (
            manifest.get("version") == DATA_VERSION
            and manifest.get("seed") == seed
            and manifest.get("customers") == customers
            and manifest.get("drift", False) == drift
        ):
            return _from_manifest(directory, manifest)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=directory.parent))
    try:
        manifest = _generate(staging, seed=seed, n_customers=customers, progress=progress, drift=drift)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return _from_manifest(directory, manifest)


def _from_manifest(directory: Path, manifest: dict[str, Any]) -> DemoData:
    return DemoData(
        directory=directory,
        seed=manifest["seed"],
        start_date=dt.date.fromisoformat(manifest["start_date"]),
        end_date=dt.date.fromisoformat(manifest["end_date"]),
        customers=manifest["customers"],
        content_hash=manifest["content_hash"],
    )


def _generate(out: Path, *, seed: int, n_customers: int, progress: Progress, drift: bool = False) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    with progress.task("Building demo data", total=4) as advance:
        ids = [customer_id(i + 1) for i in range(n_customers)]
        tier_idx = rng.choice(len(TIERS), size=n_customers, p=TIER_P)
        channel_idx = rng.choice(len(CHANNELS), size=n_customers, p=CHANNEL_P)
        signup = rng.integers(-720, 0, size=n_customers)

        # Hidden traits: how often they shop, whether they drift away, how they respond.
        activity = rng.gamma(2.0, 0.06, size=n_customers) * np.take(TIER_ACTIVITY, tier_idx)
        churning = rng.random(n_customers) < 0.3
        churn_speed = np.where(churning, rng.uniform(1.0, 4.0, n_customers), rng.uniform(-0.3, 0.3, n_customers))
        responsiveness = np.clip(
            rng.beta(2.0, 4.0, size=n_customers) + np.where(channel_idx == 1, 0.08, 0.0), 0.02, 0.95
        )
        base_logit = np.log(responsiveness / (1 - responsiveness)) - 0.8
        basket = rng.lognormal(3.3, 0.4, size=n_customers)

        days = np.arange(DAYS)
        rate = activity[:, None] * np.exp(-churn_speed[:, None] * days[None, :] / DAYS)
        counts = rng.poisson(rate)
        if drift:
            thin = np.random.default_rng(seed + 1)
            counts[:, DRIFT_FROM_DAY:] = thin.binomial(counts[:, DRIFT_FROM_DAY:], DRIFT_ACTIVITY)
            rate = rate.copy()
            rate[:, DRIFT_FROM_DAY:] *= DRIFT_ACTIVITY
        _write_customers(out / "customers.csv", ids, tier_idx, channel_idx, signup)
        advance(1)

        cust_rows, day_rows = np.nonzero(counts)
        reps = counts[cust_rows, day_rows]
        cust_rows = np.repeat(cust_rows, reps)
        day_rows = np.repeat(day_rows, reps)
        amounts = np.round(basket[cust_rows] * rng.lognormal(0.0, 0.35, size=len(cust_rows)), 2)
        # Mostly the preferred channel, sometimes another.
        stray = rng.random(len(cust_rows)) < 0.25
        tx_channel = np.where(stray, rng.integers(0, 3, len(cust_rows)), channel_idx[cust_rows])
        with (out / "transactions.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["transaction_id", "customer_id", "tx_date", "amount", "channel"])
            for t, (row, d, a, ch) in enumerate(zip(cust_rows, day_rows, amounts, tx_channel)):
                writer.writerow([t + 1, ids[row], START_DATE + dt.timedelta(days=int(d)), f"{a:.2f}", CHANNELS[ch]])
        advance(1)

        catalogue = build_catalogue(seed)
        phase = rng.integers(0, OFFER_EVERY_DAYS, size=n_customers)
        with (out / "offer_events.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["customer_id", "offer_id", "sent_date", "redeemed", "redeemed_date"])
            for c in range(n_customers):
                for sent in range(int(phase[c]), DAYS, OFFER_EVERY_DAYS):
                    recent = counts[c, max(0, sent - 14) : sent + 1].sum()
                    p = 1 / (1 + np.exp(-(base_logit[c] + 0.6 * min(int(recent), 3))))
                    offer = catalogue[int(rng.integers(0, len(catalogue)))]
                    redeemed = rng.random() < p
                    redeemed_on = sent + int(rng.integers(0, 8)) if redeemed else None
                    writer.writerow([
                        ids[c], offer["offer_id"], START_DATE + dt.timedelta(days=sent),
                        int(redeemed),
                        (START_DATE + dt.timedelta(days=redeemed_on)) if redeemed_on is not None else "",
                    ])
        advance(1)

        (out / "offers.json").write_text(json.dumps(catalogue, indent=1))
        # The hidden model behind every redemption, for the oracle metrics of `train` (never
        # read by the feature store or any model): see true_probability.
        np.savez_compressed(out / "truth.npz", rate=rate.astype(np.float32), counts=counts.astype(np.int16),
                            phase=phase.astype(np.int16), base_logit=base_logit.astype(np.float32))
        digest = hashlib.sha256()
        for name in ("customers.csv", "transactions.csv", "offer_events.csv", "offers.json"):
            digest.update((out / name).read_bytes())
        manifest = {
            "version": DATA_VERSION,
            "seed": seed,
            "customers": n_customers,
            "drift": drift,
            "transactions": int(len(cust_rows)),
            "start_date": START_DATE.isoformat(),
            "end_date": (START_DATE + dt.timedelta(days=DAYS - 1)).isoformat(),
            "content_hash": digest.hexdigest()[:16],
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        advance(1)
    return manifest


def _write_customers(path: Path, ids: list[str], tier_idx: Any, channel_idx: Any, signup: Any) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["customer_id", "tier", "declared_channel", "signup_date"])
        for cid, t, ch, s in zip(ids, tier_idx, channel_idx, signup):
            writer.writerow([cid, TIERS[t], CHANNELS[ch], START_DATE + dt.timedelta(days=int(s))])


def true_probability(
    demo: DemoData, customer_ids: Sequence[str], as_of: Sequence[dt.date], horizon_days: int,
    continued: bool = False,
) -> Any:
    """Each (customer, as_of) example's true probability of a redemption dated in
    (as_of, as_of + horizon], from the generator's hidden model; None without ``truth.npz``.

    The oracle knows every customer's hidden traits and history up to ``as_of`` (realised
    transactions), not the future: offers are sent every 14 days from a per-customer phase,
    each redeemed with probability sigmoid(base_logit + 0.6 min(transactions in the 15 days
    up to sending, 3)) and dated 0-7 days after sending. Transactions after ``as_of`` are
    Poisson with the hidden daily rate, so the expectation over them is taken exactly;
    offers are treated as independent given that (their windows share one day).

    ``continued`` lets the world go on after the data ends: offers keep coming every 14
    days and each customer's shopping rate keeps its exponential trend (what the demo's
    outcomes after the last snapshot follow, `loyaltylens feedback demo`)."""
    import numpy as np

    path = demo.directory / "truth.npz"
    if not path.is_file():
        return None
    try:
        rows = np.array([int(c[1:]) - 1 for c in customer_ids])
    except ValueError:
        return None
    with np.load(path) as truth:
        rate, counts = truth["rate"].astype(np.float64), truth["counts"].astype(np.float64)
        phase, base_logit = truth["phase"].astype(np.int64), truth["base_logit"].astype(np.float64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(phase)):
        return None
    end = DAYS
    if continued:
        extra = horizon_days + OFFER_EVERY_DAYS + 8
        trend = rate[:, -1:] / np.maximum(rate[:, -2:-1], 1e-12)
        rate = np.hstack([rate, rate[:, -1:] * trend ** np.arange(1, extra + 1)[None, :]])
        counts = np.hstack([counts, np.zeros((len(phase), extra))])  # unknown: only their expectation is used
        end = DAYS + extra
    zeros = np.zeros((len(phase), 1))
    cum_counts = np.hstack([zeros, np.cumsum(counts, axis=1)])
    cum_rate = np.hstack([zeros, np.cumsum(rate, axis=1)])
    days = np.array([(d - START_DATE).days for d in as_of])
    out = np.empty(len(rows))

    def sig(z: Any) -> Any:
        return 1.0 / (1.0 + np.exp(-z))

    for day in np.unique(days):
        sel = np.flatnonzero(days == day)
        r = rows[sel]
        bl = base_logit[r]
        steps = np.ceil((day - 7 - phase[r]) / OFFER_EVERY_DAYS).clip(min=0).astype(np.int64)
        first = phase[r] + OFFER_EVERY_DAYS * steps
        none = np.ones(len(r))
        for j in range(horizon_days // OFFER_EVERY_DAYS + 2):
            sent = first + OFFER_EVERY_DAYS * j
            valid = (sent <= day + horizon_days) & (sent < end)
            s = np.minimum(sent, end - 1)
            lo, hi = np.maximum(day + 1 - s, 0), np.minimum(day + horizon_days - s, 7)
            window = np.clip(hi - lo + 1, 0, 8) / 8.0
            start = np.maximum(s - 14, 0)
            known_end = np.minimum(s, day)
            known = np.where(known_end >= start, cum_counts[r, known_end + 1] - cum_counts[r, start], 0.0)
            future_start = np.maximum(start, day + 1)
            lam = np.where(s >= future_start, cum_rate[r, s + 1] - cum_rate[r, np.minimum(future_start, end)], 0.0)
            k0 = np.minimum(known, 3)
            p, mass, pmf = np.zeros(len(r)), np.zeros(len(r)), np.exp(-lam)
            for k in range(3):
                below = k0 + k < 3
                p += np.where(below, pmf * sig(bl + 0.6 * (k0 + k)), 0.0)
                mass += np.where(below, pmf, 0.0)
                pmf = pmf * lam / (k + 1)
            p += (1 - mass) * sig(bl + 1.8)
            none *= np.where(valid, 1 - p * window, 1.0)
        out[sel] = 1 - none
    return out


def demo_data(context: StageContext, rebuild: bool = False) -> DemoData:
    """The demo dataset for a stage's context (its data dir, seed, size and drift), built
    on first use: what the default plugins read when no real source is configured."""
    return ensure_demo_data(
        context.data_dir / "demo", seed=context.seed, customers=context.demo_customers,
        drift=context.demo_drift, progress=context.progress, rebuild=rebuild,
    )


def demo_data_of(core: "CoreSettings", progress: Progress = QUIET, *, customers: int | None = None,
                 rebuild: bool = False) -> DemoData:
    """The demo dataset of a configuration (its data dir, seed, size and drift): what
    commands working on the demo itself (seed, feedback demo) read."""
    return ensure_demo_data(Path(core.data_dir) / "demo", seed=core.seed, customers=customers or core.demo_customers,
                            drift=core.demo_drift, progress=progress, rebuild=rebuild)
