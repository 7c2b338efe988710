"""The connected-content path of a campaign on a real `serve`: treated customers get their
decision (counted against the campaign's frequency rule, shared with `campaign run`),
held-out ones a 204, customers outside the audience a 404, and every one of them is
recorded so `report --campaign` sees the live sends."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

CONFIG = """
[campaigns.live]
audience = 'tier in ("silver", "gold", "platinum")'
holdout = 0.25
channels = ["email", "push"]
frequency = { group = "weekly", days = 7 }

[campaigns.over]
end = 2020-01-31
"""


def test_the_live_path_decides_holds_out_and_caps_like_the_batch(built_cli, start_server, tmp_path):
    from loyaltylens_core.kernel.campaigns import Campaign

    config = tmp_path / "loyaltylens.toml"
    config.write_text(CONFIG)
    env = {"LOYALTYLENS_DECISION_RULES__PATH": str(tmp_path / "counters.sqlite3"),
           "LOYALTYLENS_FEEDBACK_STORE_DUCKDB__PATH": str(tmp_path / "feedback")}
    server = start_server(config=str(config), env=env)
    campaign = Campaign(name="live", holdout=0.25)
    seen: dict[str, list[str]] = {"treated": [], "holdout": [], "outside": []}
    with server.client() as client:
        for n in range(1, 61):
            customer = f"C{n:03d}"
            answer = client.get(f"/v1/campaigns/live/offer/{customer}")
            if answer.status_code == 404:
                assert "not in campaign 'live'" in answer.json()["error"]
                seen["outside"].append(customer)
            elif answer.status_code == 204:
                assert answer.headers["LoyaltyLens-Arm"] == "holdout" and campaign.arm(customer) == "holdout"
                seen["holdout"].append(customer)
            else:
                assert answer.status_code == 200, answer.text
                body = answer.json()
                assert body["arm"] == "treated" == campaign.arm(customer) and body["channel"] in ("email", "push")
                assert body["result"]["customer_id"] == customer and body["result"]["top_offer"]
                assert body["result"]["features"]["tier"] != "bronze"
                seen["treated"].append(customer)
        assert all(seen.values()), seen
        retried = client.get(f"/v1/campaigns/live/offer/{seen['treated'][0]}")
        assert retried.status_code == 200 and retried.json()["result"]["top_offer"], \
            "a retried send of the same day is not capped by its own first answer"
        assert client.get("/v1/campaigns/nope/offer/C001").status_code == 404
        over = client.get("/v1/campaigns/over/offer/C001")
        assert over.status_code == 409 and "2020-01-31" in over.json()["error"]
        assert client.get("/v1/campaigns/live/offer/C999999").status_code == 404
        assert client.get("/v1/campaigns/live/offer/bad%20id").status_code == 400
    server.stop()

    # The batch run of the same group the same day finds the live customers already served.
    proc = built_cli("-q", "--config", str(config), "campaign", "run", "live", "--dry-run", "--json", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dropped"]["capped_frequency"] > 0
    report = built_cli("-q", "--config", str(config), "report", "--campaign", "live", "--json", extra_env=env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["treated"]["impressions"] == len(seen["treated"])
    assert data["holdout"]["impressions"] == len(seen["holdout"])
