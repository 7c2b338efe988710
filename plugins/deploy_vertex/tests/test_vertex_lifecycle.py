"""The real google-cloud-aiplatform SDK (REST transport) against LocalVertex, with GCS
from gcp-storage-emulator. The deployed model really serves its model.mar."""

from __future__ import annotations

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from loyaltylens_core.kernel.errors import ConfigError, StageError, UsageError
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakeEmbedder, make_context, make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_vertex import VertexSettings, build
from loyaltylens_deploy_vertex.testing import LocalVertex
from loyaltylens_deploy_vertex.vector_search import OfferVectorSearch


def settings(vertex, gcs, **overrides):
    base = {"project": "ll-test-project", "bucket": "ll-vertex-models", "create_bucket": True,
            "api_endpoint": vertex.url, "storage_endpoint": gcs, "anonymous": True}
    return VertexSettings(**{**base, **overrides})


def target(tmp_path, vertex, gcs, **overrides):
    return build(settings(vertex, gcs, **overrides), make_context(tmp_path, "deploy_target", "vertex"))


def test_full_lifecycle(tmp_path, vertex, gcs):
    t = target(tmp_path, vertex, gcs)
    up = t.up(write_tiny_archive(tmp_path / "model.tar.gz"))
    assert up["status"] == "deployed" and up["model_version"] == "tiny_v1"
    # model.mar is in GCS where the model's artifact_uri says
    client = storage.Client(project="x", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs})
    bucket, folder = up["artifact_uri"][5:].split("/", 1)
    assert client.bucket(bucket).blob(f"{folder}/model.mar").exists()
    model = vertex.resources[up["model"]]
    assert model["containerSpec"]["imageUri"].startswith("us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu")
    assert model["artifactUri"] == up["artifact_uri"]

    for rate in (0.1, 0.8):
        features = make_features(offer_redemption_rate=rate)
        assert t.invoke(features) == {"propensity_score": pytest.approx(tiny_score(features), abs=1e-6),
                                      "model_version": "tiny_v1"}
    assert t.status()["status"] == "deployed"

    down = t.down()
    assert len(down["deleted"]) == 2
    assert up["model"] in vertex.deleted
    assert t.status()["status"] == "absent"
    with pytest.raises(UsageError, match="no Vertex AI endpoint"):
        t.invoke(make_features())


def test_second_up_reuses_the_endpoint(tmp_path, vertex, gcs):
    t = target(tmp_path, vertex, gcs)
    first = t.up(write_tiny_archive(tmp_path / "model.tar.gz"))
    second = t.up(write_tiny_archive(tmp_path / "model.tar.gz"))
    assert first["endpoint"] == second["endpoint"] and first["model"] != second["model"]
    assert len(t.down()["deleted"]) == 3  # endpoint and both models


def test_empty_predictions_are_a_clear_error(tmp_path, vertex, gcs, monkeypatch):
    t = target(tmp_path, vertex, gcs)
    t.up(write_tiny_archive(tmp_path / "model.tar.gz"))
    original = vertex.route

    def empty(method, path, body):
        status, payload = original(method, path, body)
        if path.split("?")[0].endswith(":predict"):
            payload = {**payload, "predictions": []}
        return status, payload

    monkeypatch.setattr(vertex, "route", empty)
    with pytest.raises(StageError, match="returned no predictions"):
        t.invoke(make_features())


@pytest.mark.parametrize("field", ["project", "bucket"])
def test_missing_required_settings(tmp_path, vertex, gcs, field):
    with pytest.raises(ConfigError, match=f"{field} is not set.*LOYALTYLENS_DEPLOY_TARGET_VERTEX__{field.upper()}"):
        target(tmp_path, vertex, gcs, **{field: None}).up(write_tiny_archive(tmp_path / "m.tar.gz"))


def test_missing_bucket_without_create(tmp_path, vertex, gcs):
    with pytest.raises(StageError, match="GCS bucket 'no-such-bucket-x' does not exist"):
        target(tmp_path, vertex, gcs, bucket="no-such-bucket-x", create_bucket=False).up(
            write_tiny_archive(tmp_path / "m.tar.gz"))


def test_permission_denied_is_one_line(tmp_path, gcs):
    with LocalVertex(deny=True) as denied:
        with pytest.raises(StageError) as info:
            target(tmp_path, denied, gcs).up(write_tiny_archive(tmp_path / "m.tar.gz"))
    message = str(info.value)
    assert message.startswith("Vertex AI deploy failed (403)") and "IAM" in message and "\n" not in message


def test_vector_search_for_offer_embeddings(vertex, gcs):
    search = OfferVectorSearch(settings(vertex, gcs))
    vectors = FakeEmbedder().embed([f"{o.title}. {o.description}" for o in FAKE_OFFERS])
    deployed = search.deploy(FAKE_OFFERS, vectors)
    assert deployed["datapoints"] == 3
    query = FakeEmbedder().embed(["Triple points on groceries"])
    (best,) = search.find_neighbors(query, 3)
    assert [n.offer_id for n in best][0] == "F2" and len(best) == 3
    (filtered,) = search.find_neighbors(query, 3, max_threshold=0.2)
    assert [n.offer_id for n in filtered] == ["F1"]  # only F1's threshold (0.1) is <= 0.2
    assert len(search.teardown()) == 2
