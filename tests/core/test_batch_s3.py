"""`batch --out s3://...`: the merged result and its rejects are written through pyarrow's S3
filesystem to a real S3 protocol server (moto in server mode on 127.0.0.1); the parts stay
in the data dir so an interrupted batch still resumes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from loyaltylens_core.batch import run_batch
from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.standins import s3_bucket, s3_environment, s3_server

SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def server():
    with s3_server() as url:
        yield url


@pytest.fixture
def s3(server, monkeypatch):
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in s3_environment(server, SECRET).items():
        monkeypatch.setenv(var, value)
    return s3_bucket(server, "results-bucket", SECRET)


def test_results_and_rejects_land_in_the_bucket_whole(loyaltylens_pipeline, s3):
    pipeline = loyaltylens_pipeline()
    summary = run_batch(pipeline, ["C001", "C002", "C404", "C003"], "s3://results-bucket/daily/r.parquet",
                        chunk_size=2)
    assert summary.out == "s3://results-bucket/daily/r.parquet" and summary.customers == 3 and summary.rejects == 1
    table = pq.read_table("results-bucket/daily/r.parquet", filesystem=s3)
    assert table.column("customer_id").to_pylist() == ["C001", "C002", "C003"]
    with s3.open_input_stream("results-bucket/daily/r.rejects.csv") as stream:
        assert b"C404" in stream.read()
    assert summary.rejects_file == "s3://results-bucket/daily/r.rejects.csv"
    assert not list((pipeline.config.core.data_dir / "batches").iterdir())  # parts merged and removed


def test_an_existing_object_is_kept_unless_overwrite(loyaltylens_pipeline, s3):
    pipeline = loyaltylens_pipeline()
    run_batch(pipeline, ["C001"], "s3://results-bucket/keep.parquet")
    with pytest.raises(Exception, match="already exists"):
        run_batch(pipeline, ["C002"], "s3://results-bucket/keep.parquet")
    run_batch(pipeline, ["C002"], "s3://results-bucket/keep.parquet", overwrite=True)
    assert pq.read_table("results-bucket/keep.parquet", filesystem=s3).column("customer_id").to_pylist() == ["C002"]


def test_a_missing_bucket_is_one_line_without_credentials(loyaltylens_pipeline, s3):
    pipeline = loyaltylens_pipeline()
    with pytest.raises(StageError) as caught:
        run_batch(pipeline, ["C001"], "s3://no-such-bucket/r.parquet")
    text = str(caught.value)
    assert "s3://no-such-bucket/r.parquet" in text and "\n" not in text
    assert SECRET not in text


def test_an_unknown_scheme_is_refused(loyaltylens_pipeline):
    with pytest.raises(Exception, match="not a local path, s3:// or gs://"):
        run_batch(loyaltylens_pipeline(), ["C001"], "ftp://host/r.parquet")


def test_campaign_exports_land_in_the_bucket_per_channel(loyaltylens_pipeline, s3, tmp_path):
    """`campaign run --out s3://...`: every channel's Parquet and CSV, each one PUT."""
    from loyaltylens_core.campaign import runner

    config = tmp_path / "loyaltylens.toml"
    config.write_text('[campaigns.drop]\nchannels = ["email", "sms"]\n')
    pipeline = loyaltylens_pipeline(config_path=str(config))
    done = runner.run(pipeline, pipeline.config.campaign("drop"), out="s3://results-bucket/drops")
    assert {e["path"] for e in done["exports"]} == {f"s3://results-bucket/drops/drop-{c}.{f}"
                                                   for c in ("email", "sms") for f in ("parquet", "csv")}
    sent = pq.read_table("results-bucket/drops/drop-sms.parquet", filesystem=s3)
    assert sorted(sent.column("customer_id").to_pylist()) == ["C001", "C002", "C003"]  # mobile: sms before email
    with s3.open_input_stream("results-bucket/drops/drop-email.csv") as stream:
        assert stream.read().decode().splitlines() == [
            "customer_id,offer_id,offer_title,offer_category,headline,body,cta,offer_ids,channel,campaign,run_id,"
            "impression_id"]  # nobody on email: the file is there, with its header
    with pytest.raises(StageError) as caught:
        runner.run(pipeline, pipeline.config.campaign("drop"), out="s3://no-such-bucket/x", rerun=True)
    assert SECRET not in str(caught.value) and "no-such-bucket" in str(caught.value)
