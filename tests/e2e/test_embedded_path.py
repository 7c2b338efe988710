"""End to end over the real default plugins, through the installed CLI, from an empty
data directory: demo data, feature store, training and indexing happen on first run."""

from __future__ import annotations

import json
import pytest

pytestmark = pytest.mark.slow

DEFAULT_DISTRIBUTIONS = {
    "loyaltylens-feature-duckdb", "loyaltylens-propensity-torch",
    "loyaltylens-embedder-sentence-transformers", "loyaltylens-retriever-duckdb",
    "loyaltylens-decision-rules", "loyaltylens-generator-template",
}


def test_first_run_builds_everything_then_answers(cli, tmp_path):
    data_dir = tmp_path / "fresh"
    proc = cli("run", "C001", "--json", extra_env={"LOYALTYLENS_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["customer_id"] == "C001"
    assert 0 <= result["propensity"]["score"] <= 1
    assert result["propensity"]["model_version"] == "propensity_v1"
    assert result["top_offer"]["offer_id"].startswith("OFF")
    assert result["candidates"][0]["rank"] == 1
    assert result["copy"]["headline"] and result["copy"]["prompt_version"] == "template-v1"
    assert set(result["latency_ms"]) == {"feature_store", "propensity", "retriever", "decision", "generator", "total"}
    assert {ref["distribution"] for ref in result["plugins"].values()} <= DEFAULT_DISTRIBUTIONS
    # The progress bars went to stderr, the JSON alone to stdout.
    assert "Training propensity model" in proc.stderr
    card = json.loads((data_dir / "models" / "propensity_v1" / "card.json").read_text())
    assert card["metrics"]["test"]["auc"] > 0.6
    assert (data_dir / "loyaltylens.duckdb").is_file()


def test_offers_respect_the_threshold_unless_the_fallback_says_so(cli):
    for customer in ("C002", "C010", "C500"):
        result = json.loads(cli("run", customer, "--json").stdout)
        score = result["propensity"]["score"]
        if "threshold_filtered_all" in result["fallbacks"]:
            continue
        assert all(c["offer"]["min_propensity_threshold"] <= score for c in result["candidates"])
        assert all(result["features"]["tier"] in c["offer"]["tiers"] for c in result["candidates"])


def test_second_run_reuses_data_and_model(cli):
    proc = cli("run", "C002")
    assert proc.returncode == 0, proc.stderr
    assert "Training" not in proc.stderr and "Indexing" not in proc.stderr
    for text in ("propensity", "model version", "propensity_v1", "template-v1", "top offer", "latency", "total"):
        assert text in proc.stdout


def test_unknown_customer_exits_2_with_one_line(cli):
    proc = cli("run", "C999999")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: customer 'C999999' not found. the feature store holds 1000 customers (demo ids C001 to C1000)"
    ]


def test_plugins_lists_the_default_distributions(cli):
    rows = json.loads(cli("plugins", "--json").stdout)
    assert DEFAULT_DISTRIBUTIONS <= {r["distribution"] for r in rows}
    assert all(r["status"] == "active" for r in rows if r["distribution"] in DEFAULT_DISTRIBUTIONS)


def test_explicit_train_and_index_and_seed(cli):
    train = cli("train", "--json")
    assert train.returncode == 0, train.stderr
    card = json.loads(train.stdout)
    assert card["model_version"] == "propensity_v2" and card["role"] == "challenger"
    index = cli("index")
    assert index.returncode == 0 and "indexed 200 offers" in index.stdout
    seed = cli("seed", "--customers", "1000")
    assert seed.returncode == 0 and "1000 customers" in seed.stdout

    def serving() -> str:
        return json.loads(cli("run", "C001", "--json").stdout)["propensity"]["model_version"]

    assert serving() == "propensity_v1"  # a challenger does not serve until promoted
    listed = json.loads(cli("models", "--json").stdout)
    assert [(m["version"], m["role"]) for m in listed] == [("propensity_v1", "champion"), ("propensity_v2", "challenger")]
    assert all(m["auc"] and m["ece"] is not None for m in listed)
    promoted = cli("promote", "propensity_v2", "--force", "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["previous"] == "propensity_v1" and serving() == "propensity_v2"
    back = cli("rollback")
    assert back.returncode == 0 and "propensity_v1 is the champion again" in back.stdout and serving() == "propensity_v1"
    unknown = cli("promote", "propensity_v9")
    assert unknown.returncode == 2 and "'propensity_v9' not found" in unknown.stderr


def test_batch_all_writes_every_customer_once(cli, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "results.parquet"
    proc = cli("batch", "--all", "--out", str(out), "--chunk-size", "300", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["customers"] == summary["computed"] == 1000
    ids = pq.read_table(out).column("customer_id").to_pylist()
    assert len(ids) == len(set(ids)) == 1000
    again = cli("batch", "--all", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    neither = cli("batch", "--out", str(out))
    assert neither.returncode == 2 and "exactly one of --all or --ids" in neither.stderr


def test_train_and_index_on_a_fresh_install_do_the_work_once(cli, tmp_path):
    env = {"LOYALTYLENS_DATA_DIR": str(tmp_path / "fresh"), "LOYALTYLENS_PROPENSITY_TORCH__EPOCHS": "2"}
    train = cli("train", "--json", extra_env=env)
    assert train.returncode == 0, train.stderr
    assert json.loads(train.stdout)["model_version"] == "propensity_v1"
    assert train.stderr.count("Training propensity model") == 1
    index = cli("index", extra_env=env)
    assert index.returncode == 0 and index.stderr.count("Indexing offers") == 1


def test_segment_models_train_list_and_promote_per_segment(cli, tmp_path):
    env = {"LOYALTYLENS_DATA_DIR": str(tmp_path / "segmented"), "LOYALTYLENS_PROPENSITY_TORCH__EPOCHS": "2",
           "LOYALTYLENS_PROPENSITY_TORCH__SEGMENT_BY": "tier", "LOYALTYLENS_PROPENSITY_TORCH__MIN_SEGMENT_SIZE": "800",
           "LOYALTYLENS_PROPENSITY_TORCH__SEGMENT_MUST_BEAT_GLOBAL": "false"}
    first = cli("train", "--json", extra_env=env)
    assert first.returncode == 0, first.stderr
    rows = {row["segment"]: row for row in json.loads(first.stdout)["segments"]}
    assert rows["tier=bronze"]["model_version"] == "propensity_v1" and rows["tier=bronze"]["global_auc"] > 0.5
    small = [name for name, row in rows.items() if row["model_version"] is None]
    assert small and all(rows[name]["scored_by"] == "global" for name in small)
    assert "Training propensity model (tier=bronze)" in first.stderr
    run = json.loads(cli("run", "C001", "--json", extra_env=env).stdout)
    result, tier = run["propensity"], run["features"]["tier"]
    expected = (f"tier={tier}", f"tier={tier}/propensity_v1") if f"tier={tier}" not in small else (None, "propensity_v1")
    assert (result["segment"], result["model_version"]) == expected
    assert cli("train", extra_env=env).returncode == 0
    listed = json.loads(cli("models", "--json", extra_env=env).stdout)
    bronze = [(m["version"], m["role"]) for m in listed if m["segment"] == "tier=bronze"]
    assert bronze == [("propensity_v1", "champion"), ("propensity_v2", "challenger")]
    promoted = cli("promote", "propensity_v2", "--segment", "tier=bronze", "--force", "--json", extra_env=env)
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["segment"] == "tier=bronze"
    champions = {(m["segment"], m["version"]) for m in json.loads(cli("models", "--json", extra_env=env).stdout)
                 if m["role"] == "champion"}
    assert ("tier=bronze", "propensity_v2") in champions and (None, "propensity_v1") in champions
    unknown = cli("rollback", "--segment", "tier=diamond", extra_env=env)
    assert unknown.returncode == 2 and "no models for segment 'tier=diamond'" in unknown.stderr
    # The serving segment models and the global one as a multi-model endpoint, scoring as `run` does.
    package = tmp_path / "mme"
    packaged = cli("deploy", "package", "--multi-model", "--out", str(package), "--json", extra_env=env)
    assert packaged.returncode == 0, packaged.stderr
    assert "global" in json.loads(packaged.stdout)["models"] and (package / "tier=bronze.tar.gz").is_file()
    up = cli("deploy", "up", "--archive", str(package), "--json", extra_env=env)
    assert up.returncode == 0, up.stderr
    try:
        for customer in ("C001", "C002", "C003"):
            served = json.loads(cli("deploy", "invoke", customer, "--json", extra_env=env).stdout)
            local = json.loads(cli("run", customer, "--json", extra_env=env).stdout)["propensity"]
            assert served["model_version"] == local["model_version"]
            assert abs(served["propensity_score"] - local["score"]) < 1e-5
    finally:
        cli("deploy", "down", extra_env=env)
    single = {k: v for k, v in env.items() if "SEGMENT" not in k}
    refused = cli("deploy", "package", "--multi-model", "--out", str(tmp_path / "no"), extra_env=single)
    assert refused.returncode == 2 and "no segment models serving" in refused.stderr
    # Champion and challenger as production variants of one local endpoint.
    split = cli("deploy", "up", "--variants", "champion=90,challenger=10", "--json", extra_env=single)
    assert split.returncode == 0, split.stderr
    assert {k: v["model_version"] for k, v in json.loads(split.stdout)["variants"].items()} == \
        {"champion": "propensity_v1", "challenger": "propensity_v2"}
    try:
        assert cli("deploy", "weights", "champion=0,challenger=100", extra_env=single).returncode == 0
        served = json.loads(cli("deploy", "invoke", "C001", "--json", extra_env=single).stdout)
        assert (served["variant"], served["model_version"]) == ("challenger", "propensity_v2")
    finally:
        cli("deploy", "down", extra_env=single)
    bad = cli("deploy", "up", "--variants", "champion=90", extra_env=single)
    assert bad.returncode == 2 and "at least two variants" in bad.stderr
