"""What a new user hit (issue 15), through the installed CLI or a real HTTP client:
each case one clear line, the right exit code, nothing lost."""

from __future__ import annotations

import json
import socket
import time

import pyarrow.parquet as pq
import pytest

from loyaltylens_core.sdk.standins import make_distribution

from .helpers import assert_one_clear_line

pytestmark = pytest.mark.slow


# --- 1, 2: the model endpoint ------------------------------------------------------------

REFERENCE_ROW = {"recency_days": 3, "frequency_30d": 4, "monetary_90d": 320.5, "offer_redemption_rate": 0.4,
                 "channel_preference": "mobile", "engagement_score": 0.7}


def exchange(url: str, data: bytes) -> tuple[int, bytes, float]:
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1") else 0
    return status, reply.partition(b"\r\n\r\n")[2], time.monotonic() - started


def _length(reply: bytes) -> int:
    for line in reply.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def post(url: str, payload: object) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    status, reply, _ = exchange(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return status, json.loads(reply)


def test_reference_clients_and_slow_clients_at_the_local_endpoint(built):
    up = built("deploy", "up", "--json",
               extra_env={"LOYALTYLENS_DEPLOY_TARGET_LOCAL__BODY_TIMEOUT_S": "1",
                          "LOYALTYLENS_DEPLOY_TARGET_LOCAL__HEADER_TIMEOUT_S": "1"})
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    try:
        status, reply = post(url, REFERENCE_ROW)  # six features, no tier: accepted
        assert status == 200 and 0 <= reply["propensity_score"] <= 1
        status, reply = post(url, [REFERENCE_ROW, dict(REFERENCE_ROW, tier="gold")])  # a bare list
        assert status == 200 and len(reply["predictions"]) == 2
        status, reply = post(url, {k: v for k, v in REFERENCE_ROW.items() if k != "engagement_score"})
        assert status == 400 and reply["error"] == "feature 'engagement_score' is missing"
        status, _, _ = exchange(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        assert status == 400
        status, _, took = exchange(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 400\r\n\r\n{\"recency")
        assert status == 408 and took < 10
        status, _, took = exchange(url, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")
        assert status == 408 and took < 10
        assert json.loads(built("deploy", "status", "--json").stdout)["status"] == "InService"
    finally:
        built("deploy", "down")
    card = json.loads(next((built.data_dir / "models").glob("propensity_v*/card.json")).read_text())
    assert "mean of the scores for the four tiers" in card["serving"]["absent_tier"]


# --- 3, 4: batch input -------------------------------------------------------------------


@pytest.mark.parametrize("content, fragment", [
    ("\ufeffC001\nC002\n".encode("utf-8"), None),  # a UTF-8 BOM (Notepad, Excel) is fine
    ("C001\nC002\n".encode("utf-16"), "is UTF-16 text"),
    (b"C001\n\xff\xfe\x00garbage\n", "is not UTF-8 text (byte 0xff on line 2)"),
])
def test_ids_file_encodings(built, tmp_path, content, fragment):
    ids = tmp_path / "ids.txt"
    ids.write_bytes(content)
    proc = built("batch", "--ids", str(ids), "--out", str(tmp_path / "r.parquet"), "--json")
    if fragment is None:
        assert proc.returncode == 0, proc.stderr
        assert pq.read_table(tmp_path / "r.parquet").column("customer_id").to_pylist() == ["C001", "C002"]
    else:
        assert_one_clear_line(proc, 2, fragment, "UTF-8")
        assert not (tmp_path / "r.parquet.parts").exists()


def test_a_directory_as_ids_file(built, tmp_path):
    proc = built("batch", "--ids", str(tmp_path), "--out", str(tmp_path / "r.parquet"))
    assert_one_clear_line(proc, 2, f"ids file {tmp_path} is a directory")


def test_unknown_customers_go_to_rejects_and_the_batch_goes_on(built, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("C001\n# a comment\nC999999\nC002\nC888888\n")
    out = tmp_path / "r.parquet"
    proc = built("batch", "--ids", str(ids), "--out", str(out), "--json", "--chunk-size", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rejects"] == 2 and summary["customers"] == 2
    assert pq.read_table(out).column("customer_id").to_pylist() == ["C001", "C002"]
    rejects = (tmp_path / "r.rejects.csv").read_text().splitlines()
    assert rejects[0] == "customer_id,line,reason"
    assert rejects[1:] == ["C999999,3,customer 'C999999' not found", "C888888,5,customer 'C888888' not found"]
    strict = built("--quiet", "batch", "--ids", str(ids), "--out", str(tmp_path / "s.parquet"), "--strict")
    assert_one_clear_line(strict, 2, "2 customers were not found (--strict)", "r.rejects.csv".replace("r.", "s."))
    assert (tmp_path / "s.parquet").is_file()  # the rest is still written


# --- 5: catalogue errors -----------------------------------------------------------------


@pytest.mark.parametrize("catalogue, fragment", [
    ([{"offer_id": "A", "title": "t", "description": "d", "category": "c", "min_propensity_threshold": 0.1},
      {"offer_id": "A", "title": "u", "description": "e", "category": "c", "min_propensity_threshold": 0.2}],
     "offers 0 and 1 share offer_id 'A'"),
    ({"offer_id": "A"}, "holds a JSON dict, not a list of offers"),
    ([{"offer_id": "A", "title": "t", "description": "d", "category": "c", "min_propensity_threshold": 0.1},
      {"offer_id": "B", "title": "", "description": "e", "category": "c", "min_propensity_threshold": 0.2}],
     "offer 1 ('B'): field 'title'"),
])
def test_catalogue_errors_name_the_offer_before_any_indexing(built, tmp_path, catalogue, fragment):
    path = tmp_path / "offers.json"
    path.write_text(json.dumps(catalogue))
    proc = built("run", "C001", extra_env={"LOYALTYLENS_RETRIEVER_DUCKDB__CATALOGUE": str(path),
                                           "LOYALTYLENS_DATA_DIR": str(tmp_path / "data"),
                                           "LOYALTYLENS_PROPENSITY_TORCH__EPOCHS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr
    assert "Indexing offers" not in proc.stderr and "plugin" not in lines[0]


# --- 6: plugin errors --------------------------------------------------------------------

BAD_RANK = """
from loyaltylens_core import hookimpl
from loyaltylens_core.kernel.contracts import OfferCandidate, Offer

class BadRank:
    def retrieve(self, query):
        offer = Offer(offer_id="X", title="t", description="d", category="c", min_propensity_threshold=0)
        return [OfferCandidate(offer=offer, similarity=1.0, rank=0)]

@hookimpl
def register_retrievers(register):
    register("badrank", lambda settings, context: BadRank())
"""
BROKEN = "import json\n\n\ndef helper():\n    return json.loads('{')\n\n\nhelper()\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site15")
    make_distribution(site, "loyaltylens-badrank", "ll_badrank", BAD_RANK, "badrank")
    make_distribution(site, "loyaltylens-keyword", "ll_keyword", BROKEN, "keyword")
    return site


def test_a_plugin_building_a_bad_contract_names_plugin_stage_and_field(built, site):
    proc = built("--use", "retriever=badrank", "run", "C001", extra_env={"PYTHONPATH": str(site)})
    assert_one_clear_line(proc, 3, "retriever plugin 'badrank'", "OfferCandidate contract", "field 'rank'")


def test_selecting_a_broken_plugin_says_installed_but_broken_with_its_line(built, site):
    proc = built("--use", "retriever=keyword", "run", "C001", extra_env={"PYTHONPATH": str(site)})
    line = assert_one_clear_line(proc, 3, "retriever plugin 'keyword' is installed but broken", "JSONDecodeError")
    assert f"{site / 'll_keyword.py'}:5" in line
    debug = built("--debug", "--use", "retriever=keyword", "run", "C001", extra_env={"PYTHONPATH": str(site)})
    assert "ll_keyword.py\", line 5, in helper" in debug.stderr
    assert "loyaltylens_core/cli.py" not in debug.stderr


# --- 7: the command line -----------------------------------------------------------------


def test_an_id_starting_with_a_dash(built):
    proc = built("run", "-C001")
    assert_one_clear_line(proc, 2, "customer id '-C001' is malformed", "starting with a letter or digit")
    assert "╭" not in proc.stderr


def test_usage_errors_are_one_line(built):
    assert_one_clear_line(built("run"), 2, "Missing argument 'customer_id'", "loyaltylens run --help")
    assert_one_clear_line(built("run", "C001", "--bogus"), 2, "No such option: --bogus")


# --- 8: cloud credentials ----------------------------------------------------------------

NO_CLOUD = {
    # Nothing in the credential chains, and no instance-metadata look-ups (no traffic off this machine).
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "NO_GCE_CHECK": "True", "GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": "/nonexistent",
}


@pytest.mark.parametrize("command", [["deploy", "status"], ["deploy", "invoke", "C001"]])
def test_no_aws_credentials(built, command):
    env = {**NO_CLOUD, "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__ROLE_ARN": "arn:aws:iam::123456789012:role/LL",
           "LOYALTYLENS_DEPLOY_TARGET_SAGEMAKER__BUCKET": "ll-none"}
    proc = built(*command, "--target", "sagemaker", extra_env=env)
    assert_one_clear_line(proc, 4, "no AWS credentials found", "AWS_PROFILE", "credential chain")


def test_no_gcp_credentials(built):
    env = {**NO_CLOUD, "LOYALTYLENS_DEPLOY_TARGET_VERTEX__PROJECT": "my-project",
           "LOYALTYLENS_DEPLOY_TARGET_VERTEX__BUCKET": "ll-none"}
    proc = built("deploy", "status", "--target", "vertex", extra_env=env)
    assert_one_clear_line(proc, 4, "no Google Cloud credentials found", "GOOGLE_APPLICATION_CREDENTIALS")
