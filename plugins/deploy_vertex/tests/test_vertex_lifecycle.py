"""The real google-cloud-aiplatform SDK (REST transport) against LocalVertex, with GCS
from gcp-storage-emulator. The deployed model really serves its model.mar."""

from __future__ import annotations

import collections
import json

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from loyaltylens_core.kernel.errors import ConfigError, StageError, UsageError
from loyaltylens_core.sdk.testing import FAKE_OFFERS, FakeEmbedder, make_context, make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_vertex import VertexSettings, build
from loyaltylens_deploy_vertex.target import traffic_percentages
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


def variants_package(root, weights=(("champion", 70, "tiny_v1"), ("challenger", 30, "tiny_v2"))):
    """What `deploy package --variants champion=70,challenger=30` writes."""
    root.mkdir()
    manifest = {"format": "loyaltylens-variants/1", "variants": {}}
    for name, weight, version in weights:
        write_tiny_archive(root / f"{name}.tar.gz", version=version)
        manifest["variants"][name] = {"archive": f"{name}.tar.gz", "weight": weight, "model_version": version}
    (root / "variants.json").write_text(json.dumps(manifest))
    return root


def test_variants_split_one_endpoints_traffic_and_the_split_changes_in_place(tmp_path, vertex, gcs):
    t = target(tmp_path, vertex, gcs, endpoint_name="ll-variants")
    up = t.up(variants_package(tmp_path / "variants"))
    assert {k: v["weight"] for k, v in up["variants"].items()} == {"champion": 70, "challenger": 30}
    endpoint = vertex.resources[up["endpoint"]]
    ids = {name: v["deployed_model_id"] for name, v in up["variants"].items()}
    assert endpoint["trafficSplit"] == {ids["champion"]: 70, ids["challenger"]: 30}
    assert t.status()["traffic_split"] == {"champion": 70, "challenger": 30}

    # Each reply says which variant answered, and that variant's model really scored it.
    answers = [t.invoke(make_features()) for _ in range(60)]
    seen = collections.Counter(a["variant"] for a in answers)
    assert set(seen) == {"champion", "challenger"} and seen["champion"] > seen["challenger"]
    assert {a["variant"]: a["model_version"] for a in answers} == {"champion": "tiny_v1", "challenger": "tiny_v2"}

    models_before = set(vertex.resources)
    assert t.update_weights({"challenger": 100, "champion": 0})["weights"] == {"challenger": 100, "champion": 0}
    assert set(vertex.resources) == models_before  # nothing redeployed
    assert {t.invoke(make_features())["variant"] for _ in range(10)} == {"challenger"}
    assert t.update_weights({"champion": 1})["weights"] == {"champion": 1, "challenger": 99}  # the other keeps its weight
    with pytest.raises(UsageError, match="no variant 'nope'"):
        t.update_weights({"nope": 1})
    with pytest.raises(UsageError, match="no variant would get traffic"):
        t.update_weights({"champion": 0, "challenger": 0})
    down = t.down()
    assert len(down["deleted"]) == 3  # the endpoint and both models
    with pytest.raises(UsageError, match="no Vertex AI endpoint"):
        t.update_weights({"champion": 50})


def test_the_stand_in_refuses_a_split_vertex_would_refuse(tmp_path, vertex, gcs):
    t = target(tmp_path, vertex, gcs, endpoint_name="ll-refused")
    up = t.up(variants_package(tmp_path / "variants"))
    endpoint = t._endpoint()
    with pytest.raises(Exception, match="add up to 100"):
        endpoint.update(traffic_split={up["variants"]["champion"]["deployed_model_id"]: 50})
    t.down()


@pytest.mark.parametrize("weights, expected", [
    ({"a": 90, "b": 10}, {"a": 90, "b": 10}),
    ({"a": 2, "b": 1}, {"a": 67, "b": 33}),
    ({"a": 1, "b": 1, "c": 1}, {"a": 34, "b": 33, "c": 33}),
    ({"a": 0.5, "b": 0}, {"a": 100, "b": 0}),
])
def test_weights_become_whole_percentages_that_add_up_to_100(weights, expected):
    assert traffic_percentages(weights) == expected


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
