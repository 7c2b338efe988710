"""The real sagemaker-pytorch-inference handler loads the archive as the container would."""

from __future__ import annotations

import pytest
from sagemaker_pytorch_serving_container.default_pytorch_inference_handler import ModelLoadError

from loyaltylens_core.kernel.errors import StageError
from loyaltylens_core.sdk.testing import make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_sagemaker.container_check import invoke_in_container_handler


def test_archive_loads_and_scores_in_the_real_handler(tmp_path):
    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    features = [make_features(f"C{i}", offer_redemption_rate=r, channel_preference=c)
                for i, (r, c) in enumerate([(0.1, "web"), (0.9, "in-store"), (0.5, "mobile")])]
    replies = invoke_in_container_handler(archive, [f.model_dump(mode="json") for f in features])
    for f, reply in zip(features, replies):
        assert reply["model_version"] == "tiny_v1"
        assert reply["propensity_score"] == pytest.approx(tiny_score(f), abs=1e-6)


def test_instances_request_in_the_real_handler(tmp_path):
    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    rows = [make_features(offer_redemption_rate=r).model_dump(mode="json") for r in (0.2, 0.8)]
    (reply,) = invoke_in_container_handler(archive, [{"instances": rows}])
    assert [p["model_version"] for p in reply["predictions"]] == ["tiny_v1", "tiny_v1"]


def test_state_dict_archive_fails_with_model_load_error(tmp_path):
    archive = write_tiny_archive(tmp_path / "model.tar.gz", state_dict=True)
    with pytest.raises(ModelLoadError, match="TorchScript"):
        invoke_in_container_handler(archive, [make_features().model_dump(mode="json")])


def test_bad_request_is_reported_by_the_handler(tmp_path):
    archive = write_tiny_archive(tmp_path / "model.tar.gz")
    with pytest.raises(StageError, match="handler answered 400: feature 'recency_days' is missing"):
        invoke_in_container_handler(archive, [{"tier": "gold"}])
    row = dict(make_features().model_dump(mode="json"), recency_days="soon")
    with pytest.raises(StageError, match="handler answered 400: feature 'recency_days' must be a number"):
        invoke_in_container_handler(archive, [row])
