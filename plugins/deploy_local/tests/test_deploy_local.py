"""The local endpoint over real HTTP, serving a real TorchScript archive built here."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.error
import urllib.request

import pytest
from loyaltylens_core.kernel.errors import StageError, UsageError
from loyaltylens_core.sdk.testing import make_context, make_features, tiny_score, write_tiny_archive
from loyaltylens_deploy_local import LocalDeploySettings, build

@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_tiny_archive(tmp_path_factory.mktemp("archive") / "model.tar.gz")


@pytest.fixture(scope="module")
def endpoint(archive, tmp_path_factory):
    target = build(LocalDeploySettings(), make_context(tmp_path_factory.mktemp("data"), "deploy_target", "local"))
    info = target.up(archive)
    yield target, info
    target.down()


def post(url: str, body: bytes, content_type: str = "application/json"):
    request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_up_serves_ping_and_binds_loopback(endpoint):
    target, info = endpoint
    assert info["status"] == "InService" and info["model_version"] == "tiny_v1"
    assert info["url"].startswith("http://127.0.0.1:")
    assert target.status()["status"] == "InService"


def test_invoke_returns_the_models_score(endpoint):
    target, _ = endpoint
    for channel in ("in-store", "mobile", "web"):
        features = make_features(channel_preference=channel, offer_redemption_rate=0.8)
        reply = target.invoke(features)
        assert reply["model_version"] == "tiny_v1"
        assert reply["propensity_score"] == pytest.approx(tiny_score(features), abs=1e-6)


def test_instances_batch(endpoint):
    _, info = endpoint
    rows = [make_features(offer_redemption_rate=r).model_dump(mode="json") for r in (0.1, 0.9)]
    status, body = post(info["url"], json.dumps({"instances": rows}).encode())
    assert status == 200 and len(body["predictions"]) == 2
    assert body["predictions"][1]["propensity_score"] > body["predictions"][0]["propensity_score"]


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"not json", "application/json", 400, "not valid JSON"),
    (b"{}", "text/plain", 415, "application/json"),
    (json.dumps({"recency_days": 1}).encode(), "application/json", 400, "frequency_30d"),
    (json.dumps({**make_features().model_dump(mode="json"), "tier": "diamond"}).encode(), "application/json", 400, "tier"),
    (json.dumps({**make_features().model_dump(mode="json"), "monetary_90d": -5}).encode(), "application/json", 400, "monetary_90d"),
    (json.dumps({"instances": []}).encode(), "application/json", 400, "non-empty"),
    (b"x" * 2_000_000, "application/json", 413, "body over"),
])
def test_bad_requests_get_4xx_and_the_server_stays_up(endpoint, body, content_type, status, message):
    target, info = endpoint
    got, reply = post(info["url"], body, content_type)
    assert got == status and message in reply["error"]
    assert target.status()["status"] == "InService"


def test_unknown_route_is_404(endpoint):
    _, info = endpoint
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(info["url"] + "/nope", timeout=5)
    assert err.value.code == 404


def test_invoke_without_endpoint_is_a_clear_error(tmp_path):
    target = build(LocalDeploySettings(), make_context(tmp_path))
    assert target.status() == {"status": "absent"}
    with pytest.raises(UsageError, match="no local endpoint is running"):
        target.invoke(make_features())
    assert target.down() == {"status": "absent"}


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_archive_with_parent_paths_is_refused_and_server_does_not_start(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        add(tar, "../escape.txt", b"x")
    target = build(LocalDeploySettings(start_timeout_s=30), make_context(tmp_path))
    with pytest.raises(StageError, match="exited at start: .*points outside the archive"):
        target.up(evil)
    assert not (tmp_path.parent / "escape.txt").exists()


REFERENCE_ROW = {"recency_days": 3, "frequency_30d": 4, "monetary_90d": 320.5, "offer_redemption_rate": 0.4,
                 "channel_preference": "mobile", "engagement_score": 0.7}


def test_a_reference_client_without_tier_gets_the_mean_over_tiers(endpoint):
    """Clients written for the reference endpoint send six features and no tier."""
    _, info = endpoint
    per_tier = [post(info["url"], json.dumps(dict(REFERENCE_ROW, tier=t)).encode())[1]["propensity_score"]
                for t in ("bronze", "silver", "gold", "platinum")]
    status, reply = post(info["url"], json.dumps(REFERENCE_ROW).encode())
    assert status == 200 and reply["propensity_score"] == pytest.approx(sum(per_tier) / 4, abs=1e-6)
    status, reply = post(info["url"], json.dumps([REFERENCE_ROW, REFERENCE_ROW]).encode())
    assert status == 200 and len(reply["predictions"]) == 2
    status, reply = post(info["url"], json.dumps({k: v for k, v in REFERENCE_ROW.items() if k != "recency_days"}).encode())
    assert status == 400 and reply["error"] == "feature 'recency_days' is missing"


def raw_exchange(url: str, data: bytes, wait: float = 30) -> tuple[bytes, float]:
    import socket
    import time

    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        reply = sock.recv(4096)
    return reply, time.monotonic() - started


@pytest.fixture
def strict_endpoint(archive, tmp_path):
    settings = LocalDeploySettings(body_timeout_s=1, header_timeout_s=1)
    target = build(settings, make_context(tmp_path, "deploy_target", "local"))
    info = target.up(archive)
    yield target, info
    target.down()


def test_bad_content_length_stalled_bodies_and_stalled_headers_are_bounded(strict_endpoint):
    target, info = strict_endpoint
    reply, _ = raw_exchange(info["url"], b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    reply, took = raw_exchange(info["url"], b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                            b"Content-Length: 500\r\n\r\n{\"recency")
    assert reply.startswith(b"HTTP/1.1 408") and took < 5
    reply, took = raw_exchange(info["url"], b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
    assert reply.startswith(b"HTTP/1.1 408") and took < 5
    assert target.status()["status"] == "InService"


def test_the_server_leaves_nothing_in_the_system_temp_dir(strict_endpoint, tmp_path):
    import tempfile
    from pathlib import Path

    assert not [p for p in Path(tempfile.gettempdir()).glob("ll-serve-*") if str(tmp_path) not in str(p)
                and p.stat().st_mtime > __import__("time").time() - 60]
    assert list((tmp_path / "deploy_target-local" / "serving").glob("ll-serve-*"))
