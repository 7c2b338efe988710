"""model.mar built with torch-model-archiver, loaded by TorchServe's own model loader."""

from __future__ import annotations

import json
import zipfile

import pytest
from ts.model_loader import TsModelLoader

from loyaltylens_core.sdk.testing import make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_vertex.mar import build_mar, extract_mar, load_in_torchserve


@pytest.fixture(scope="module")
def mar(tmp_path_factory):
    work = tmp_path_factory.mktemp("mar")
    return build_mar(write_tiny_archive(work / "model.tar.gz"), work / "out")


def rows(*rates):
    return [make_features(f"C{i}", offer_redemption_rate=r, channel_preference="web").model_dump(mode="json")
            for i, r in enumerate(rates)]


def test_mar_layout(mar):
    assert mar.name == "model.mar"
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"model.pt", "spec.json", "inference.py", "handler.py", "MAR-INF/MANIFEST.json"} <= names
    manifest = json.loads(zipfile.ZipFile(mar).read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["serializedFile"] == "model.pt" and manifest["model"]["handler"] == "handler.py"


def test_vertex_request_scores_like_the_model(mar, tmp_path):
    predict = load_in_torchserve(mar, tmp_path)
    instances = rows(0.1, 0.9)
    (reply,) = predict([{"instances": instances}])
    expected = [tiny_score(make_features(**{**i, "as_of": i["as_of"]})) for i in instances]
    assert [p["propensity_score"] for p in reply["predictions"]] == pytest.approx(expected, abs=1e-6)
    assert {p["model_version"] for p in reply["predictions"]} == {"tiny_v1"}


def test_torchserve_json_envelope(mar, tmp_path):
    """With TorchServe's JSON envelope the handler receives bare instances."""
    model_dir = extract_mar(mar, tmp_path / "model")
    import sys

    sys.path.insert(0, str(model_dir))
    for module in ("handler", "inference"):
        sys.modules.pop(module, None)
    service = TsModelLoader().load("model", str(model_dir), "handler.py", None, 1, envelope="json")
    out = service._entry_point([{"body": {"instances": rows(0.3, 0.6, 0.9)}}], service.context)
    predictions = json.loads(out[0])["predictions"]
    assert len(predictions) == 3 and predictions[0]["propensity_score"] < predictions[2]["propensity_score"]


def test_bad_instances_are_a_400(mar, tmp_path):
    from ts.utils.util import PredictionException

    predict = load_in_torchserve(mar, tmp_path)
    with pytest.raises(PredictionException) as info:
        predict([{"instances": [{"tier": "gold"}]}])
    assert info.value.error_code == 400 and "recency_days" in info.value.message
    with pytest.raises(PredictionException, match="instances"):
        predict([{"rows": []}])


def test_state_dict_archive_does_not_load(tmp_path):
    bad = build_mar(write_tiny_archive(tmp_path / "bad.tar.gz", state_dict=True), tmp_path / "out")
    with pytest.raises(Exception, match="TorchScript"):
        load_in_torchserve(bad, tmp_path / "w")
