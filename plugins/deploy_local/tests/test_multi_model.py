"""The multi-model endpoint over real HTTP, driven the way SageMaker drives a container:
load / list / get / unload / invoke by model name, and InvokeEndpoint's TargetModel header
on /invocations, over four real TorchScript archives."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.sdk.archive import safe_extract
from loyaltylens_core.sdk.testing import make_context, make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_local import LocalDeploySettings, build

MODELS = ("global", "tier=bronze", "tier=gold", "tier=silver")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A multi-model package as `deploy package --multi-model` lays it out."""
    root = tmp_path_factory.mktemp("package")
    manifest = {"format": "loyaltylens-multi-model/1", "models": {}}
    for name in MODELS:
        write_tiny_archive(root / f"{name}.tar.gz", version=f"{name}/tiny_v1")
        manifest["models"][name] = {"target_model": f"{name}.tar.gz", "model_version": f"{name}/tiny_v1"}
    (root / "models.json").write_text(json.dumps(manifest))
    return root


def start(package, tmp_path_factory, **settings):
    target = build(LocalDeploySettings(**settings), make_context(tmp_path_factory.mktemp("data"), "deploy_target", "local"))
    return target, target.up(package)


@pytest.fixture(scope="module")
def endpoint(package, tmp_path_factory):
    target, info = start(package, tmp_path_factory, max_models=8)
    yield target, info
    target.down()


def call(url: str, method: str, path: str, body: object = None, headers: dict[str, str] | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def features_json(**values):
    return json.loads(make_features(**values).model_dump_json())


def test_up_on_a_package_directory_serves_every_archive_in_it(endpoint):
    target, info = endpoint
    assert info["status"] == "InService" and info["target_models"] == sorted(f"{m}.tar.gz" for m in MODELS)
    status, ping = call(info["url"], "GET", "/ping")
    assert status == 200 and ping["multi_model"] is True


def test_the_container_model_apis(endpoint, package, tmp_path):
    _, info = endpoint
    url = info["url"]
    extracted = safe_extract(package / "tier=gold.tar.gz", tmp_path / "gold" / "model")
    assert call(url, "POST", "/models", {"model_name": "gold", "url": str(extracted)})[0] == 200
    again = call(url, "POST", "/models", {"model_name": "gold", "url": str(extracted)})
    assert again[0] == 409 and "'gold' is already loaded" in again[1]["error"]
    assert call(url, "POST", "/models", {"model_name": "x", "url": str(tmp_path / "nothing")})[0] == 404
    assert call(url, "POST", "/models", {"name": "x"})[0] == 400
    status, listing = call(url, "GET", "/models")
    assert status == 200 and {"modelName": "gold", "modelUrl": str(extracted)} in listing["models"]
    assert call(url, "GET", "/models/gold") == (200, {"modelName": "gold", "modelUrl": str(extracted)})
    row = features_json(offer_redemption_rate=0.7)
    status, reply = call(url, "POST", "/models/gold/invoke", row, {"X-Amzn-SageMaker-Target-Model": "tier=gold.tar.gz"})
    assert status == 200 and reply["model_version"] == "tier=gold/tiny_v1"
    assert reply["propensity_score"] == pytest.approx(tiny_score(make_features(offer_redemption_rate=0.7)), abs=1e-6)
    assert call(url, "DELETE", "/models/gold")[0] == 200
    gone = call(url, "POST", "/models/gold/invoke", row)
    assert gone[0] == 404 and gone[1]["error"] == "model 'gold' is not loaded"
    assert call(url, "DELETE", "/models/gold")[0] == 404


def test_invocations_with_a_target_model_load_it_on_first_use(endpoint):
    _, info = endpoint
    row = features_json(offer_redemption_rate=0.3)
    for name in MODELS:
        status, reply = call(info["url"], "POST", "/invocations", row, {"X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"})
        assert status == 200 and reply["model_version"] == f"{name}/tiny_v1"
    loaded = {m["modelName"] for m in call(info["url"], "GET", "/models")[1]["models"]}
    assert set(MODELS) <= loaded


@pytest.mark.parametrize("target, status, message", [
    ("tier=diamond.tar.gz", 404, "target model 'tier=diamond.tar.gz' not found"),
    ("../../etc/passwd", 404, "outside the endpoint's model prefix"),
    (None, 400, "needs a target model"),
])
def test_a_bad_target_model_is_a_clear_error(endpoint, target, status, message):
    _, info = endpoint
    headers = {"X-Amzn-SageMaker-Target-Model": target} if target else {}
    got, body = call(info["url"], "POST", "/invocations", features_json(), headers)
    assert got == status and message in body["error"]
    assert call(info["url"], "GET", "/ping")[0] == 200


def test_the_least_recently_used_model_is_unloaded_to_make_room(package, tmp_path_factory):
    target, info = start(package, tmp_path_factory, max_models=2)
    try:
        row = features_json()
        for name in ("global", "tier=gold", "global", "tier=silver"):  # gold is the least recently used
            call(info["url"], "POST", "/invocations", row, {"X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"})
        loaded = [m["modelName"] for m in call(info["url"], "GET", "/models")[1]["models"]]
        assert sorted(loaded) == ["global", "tier=silver"]
        # An unloaded model is loaded again on its next call, not lost.
        status, reply = call(info["url"], "POST", "/invocations", row, {"X-Amzn-SageMaker-Target-Model": "tier=gold.tar.gz"})
        assert status == 200 and reply["model_version"] == "tier=gold/tiny_v1"
    finally:
        target.down()


def test_invoke_picks_the_customers_segment_archive(endpoint):
    target, _ = endpoint
    assert target.invoke(make_features(tier="gold"))["model_version"] == "tier=gold/tiny_v1"
    reply = target.invoke(make_features(tier="platinum"))  # no platinum model: the global one
    assert reply["model_version"] == "global/tiny_v1" and reply["target_model"] == "global.tar.gz"
    assert target.invoke(make_features(tier="gold"), target_model="tier=silver.tar.gz")["model_version"] == \
        "tier=silver/tiny_v1"


def test_a_single_model_endpoint_refuses_a_target_model(tmp_path_factory):
    archive = write_tiny_archive(tmp_path_factory.mktemp("one") / "model.tar.gz")
    target, _ = start(archive, tmp_path_factory)
    try:
        with pytest.raises(UsageError, match="serves one model"):
            target.invoke(make_features(), target_model="tier=gold.tar.gz")
    finally:
        target.down()


def test_up_on_a_directory_without_archives_is_a_usage_error(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    target = build(LocalDeploySettings(), make_context(tmp_path_factory.mktemp("d"), "deploy_target", "local"))
    with pytest.raises(UsageError, match="holds no model archives"):
        target.up(empty)
