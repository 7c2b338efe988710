"""`loyaltylens monitor`: PSI with bins from the reference's quantiles, statuses and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from loyaltylens_core.loop.drift import drift_report, psi_categorical, psi_numeric
from loyaltylens_core.sdk.testing import make_features
from loyaltylens_core.sdk.standins import fake_plugin_environment


def test_the_same_distribution_has_no_drift_and_a_shift_in_money_is_critical():
    rng = np.random.default_rng(0)
    spend = rng.lognormal(5, 1, 5000)  # money: 0 to thousands, not [0, 1]
    same, table = psi_numeric(spend, rng.lognormal(5, 1, 5000))
    assert same < 0.02 and len(table) == 10
    assert all(abs(row["reference"] - 0.1) < 0.01 for row in table)  # quantile bins: a tenth each
    assert table[0]["low"] is None and table[-1]["high"] is None and table[1]["low"] > 1
    shifted, _ = psi_numeric(spend, rng.lognormal(5, 1, 5000) * 1.8)
    assert shifted > 0.25


def test_categories_compare_shares_including_one_that_appears():
    value, table = psi_categorical(["web"] * 50 + ["mobile"] * 50, ["web"] * 50 + ["mobile"] * 30 + ["in-store"] * 20)
    assert value > 0.25 and {row["category"] for row in table} == {"web", "mobile", "in-store"}
    assert psi_categorical(["web", "mobile"] * 50, ["mobile", "web"] * 50)[0] == pytest.approx(0)


def test_the_report_takes_the_worst_status():
    reference = [make_features(f"C{i}", engagement_score=(i % 100) / 100) for i in range(1000)]
    current = [make_features(f"C{i}", engagement_score=min(1.0, (i % 100) / 100 + 0.3)) for i in range(1000)]
    report = drift_report(reference, current, [0.5] * 1000, [0.5] * 1000)
    assert report["features"]["engagement_score"]["status"] == "critical" and report["status"] == "critical"
    assert report["features"]["recency_days"]["status"] == "ok"
    json.dumps(report, allow_nan=False)  # valid JSON: no Infinity


STORE = """
import datetime as dt
from loyaltylens_core.kernel.contracts import SnapshotInfo
from loyaltylens_core.sdk.testing import FakeFeatureStore, FakePlugin, make_features

DAYS = [dt.date(2026, 5, 30), dt.date(2026, 6, 29)]
SHIFT = __import__("os").environ.get("DRIFT_TEST_SHIFT") == "1"


def rows(day):
    late = day == DAYS[1] and SHIFT
    return [make_features(f"C{i:04d}", as_of=day, monetary_90d=float(i % 500) * (3.0 if late else 1.0))
            for i in range(1, 1001)]


class Store(FakeFeatureStore):
    def snapshot_info(self, as_of=None):
        days = [d for d in DAYS if as_of is None or d <= as_of]
        if not days:
            from loyaltylens_core.kernel.errors import StageError
            raise StageError(f"no snapshot on or before {as_of}", "pick a later date")
        return SnapshotInfo(as_of=days[-1], customers=1000, feature_version="v1", fingerprint=str(days[-1]))

    def snapshot_batches(self, as_of, batch_size=10_000):
        yield rows(as_of)


plugin = FakePlugin(feature_store=Store({f.customer_id: f for f in rows(DAYS[1])}))
"""


@pytest.fixture
def monitor(tmp_path):
    env = fake_plugin_environment(tmp_path, STORE, "driftfakes")

    def run(*args: str, shift: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loyaltylens_core.cli", "-q", "monitor", *args],
                              capture_output=True, text=True, env={**env, "DRIFT_TEST_SHIFT": "1" if shift else "0"},
                              timeout=120)

    return run


def test_monitor_exits_0_when_stable_and_2_on_a_planted_shift(monitor):
    stable = monitor("--json")
    assert stable.returncode == 0, stable.stderr
    report = json.loads(stable.stdout)
    assert report["status"] == "ok" and report["reference"]["as_of"] == "2026-05-30"
    shifted = monitor("--json", shift=True)
    assert shifted.returncode == 2
    report = json.loads(shifted.stdout)
    assert report["features"]["monetary_90d"]["status"] == "critical"
    assert report["features"]["recency_days"]["status"] == "ok"
    text = monitor(shift=True)
    assert text.returncode == 2 and "monetary_90d" in text.stdout and "critical" in text.stdout.splitlines()[0]


def test_monitor_thresholds_decide_the_status(monitor):
    assert monitor("--warning", "0.01", "--critical", "100", shift=True).returncode == 1


@pytest.mark.parametrize("args, message", [
    (["--warning", "0.3", "--critical", "0.2"], "need 0 < warning < critical"),
    (["--reference", "yesterday"], "--reference 'yesterday' is not a date"),
    (["--reference", "2026-06-29"], "is not before the current one"),
    (["--as-of", "2026-05-30"], "no snapshot on or before 2026-05-29"),
])
def test_bad_monitor_input_is_one_line(monitor, args, message):
    proc = monitor(*args)
    assert proc.returncode in (2, 4) and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_ratio_on_a_new_lattice_is_not_drift_but_a_real_shift_is():
    """Offers redeemed / sent: 11 offers a customer last month, 13 this month. The customers'
    propensities are the same draw; only the lattice moved. A shifted propensity is drift."""
    import numpy as np

    from loyaltylens_core.loop.drift import psi_numeric

    rng = np.random.default_rng(5)
    propensity = rng.beta(2, 4, 5000)
    last_month = rng.binomial(11, propensity) / 11
    this_month = rng.binomial(13, propensity) / 13
    shifted = rng.binomial(13, np.clip(propensity + 0.15, 0, 1)) / 13
    assert psi_numeric(last_month, this_month)[0] < 0.1
    assert psi_numeric(last_month, shifted)[0] > 0.25
