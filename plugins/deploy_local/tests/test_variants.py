"""Production variants on the local endpoint over real HTTP: the weighted split, the
variant named in every reply, and a weight update while it serves."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest
from loyaltylens_core.kernel.errors import UsageError
from loyaltylens_core.sdk.testing import make_context, make_features, write_tiny_archive
from loyaltylens_deploy_local import LocalDeploySettings, build


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    manifest = {"format": "loyaltylens-variants/1", "variants": {}}
    for name, weight, version in (("champion", 90, "tiny_v1"), ("challenger", 10, "tiny_v2")):
        write_tiny_archive(root / f"{name}.tar.gz", version=version)
        manifest["variants"][name] = {"archive": f"{name}.tar.gz", "weight": weight, "model_version": version}
    (root / "variants.json").write_text(json.dumps(manifest))
    target = build(LocalDeploySettings(), make_context(tmp_path_factory.mktemp("data"), "deploy_target", "local"))
    info = target.up(root)
    yield target, info
    target.down()


def split(url: str, requests: int, headers: dict[str, str] | None = None) -> dict[str, int]:
    """Requests per variant over one keep-alive connection, checking each reply's version."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=20)
    body = make_features().model_dump_json().encode()
    counts: dict[str, int] = {}
    versions = {"champion": "tiny_v1", "challenger": "tiny_v2"}
    for _ in range(requests):
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        reply = json.loads(response.read())
        variant = response.getheader("X-Amzn-Invoked-Production-Variant")
        assert response.status == 200 and reply["model_version"] == versions[variant]
        counts[variant] = counts.get(variant, 0) + 1
    connection.close()
    return counts


def test_requests_split_by_weight_and_name_their_variant(endpoint):
    target, info = endpoint
    assert info["variants"] == {"champion": {"weight": 90.0, "model_version": "tiny_v1"},
                                "challenger": {"weight": 10.0, "model_version": "tiny_v2"}}
    counts = split(info["url"], 10_000)
    assert abs(counts["challenger"] / 10_000 - 0.10) <= 0.03
    assert target.invoke(make_features())["variant"] in ("champion", "challenger")


def test_a_target_variant_header_picks_the_variant(endpoint):
    _, info = endpoint
    assert split(info["url"], 50, {"X-Amzn-SageMaker-Target-Variant": "challenger"}) == {"challenger": 50}


def test_weights_change_while_the_endpoint_serves(endpoint):
    target, info = endpoint
    pid = target.status()["pid"]
    updated = target.update_weights({"champion": 50, "challenger": 50})
    assert updated["variants"]["challenger"]["weight"] == 50.0
    counts = split(info["url"], 4_000)
    assert abs(counts["challenger"] / 4_000 - 0.5) <= 0.03
    assert target.status()["pid"] == pid  # the same server: nothing restarted
    with pytest.raises(UsageError, match="no variant 'nope'"):
        target.update_weights({"nope": 1})
    target.update_weights({"champion": 100, "challenger": 0})
    assert split(info["url"], 200) == {"champion": 200}
