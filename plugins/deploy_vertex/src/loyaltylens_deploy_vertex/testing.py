"""Local stand-ins for testing against Vertex AI without a Google Cloud account.

``LocalVertex`` is a small server for the Vertex AI REST API (v1) as the
google-cloud-aiplatform SDK uses it with ``api_transport="rest"``: models:upload,
endpoints (create, get, list, patch, deployModel, undeployModel, predict, delete), Vector Search
indexes and index endpoints, and long-running operations (finished at once). Deleted
resources stay readable, as the SDK may read a resource again after deleting it.
A deployed model really serves: ``predict`` fetches its model.mar from GCS and runs it
through TorchServe's own model loader. An endpoint's ``trafficSplit`` (set by deployModel or
a patch; whole percentages adding up to 100, as Vertex checks) picks which deployed model
answers each predict, at random by weight (seeded, so a test run repeats).

``start_storage_emulator`` runs gcp-storage-emulator on 127.0.0.1 for GCS.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
import shutil
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loyaltylens_core.util.httpserver import LocalHTTPServer
from loyaltylens_core.sdk.standins import free_port, start_local_process

V1 = "type.googleapis.com/google.cloud.aiplatform.v1."


def start_storage_emulator() -> tuple[subprocess.Popen, str]:
    """gcp-storage-emulator in its own process on 127.0.0.1, in memory."""
    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
            "--in-memory"]
    return start_local_process(argv, port, "storage emulator"), f"http://127.0.0.1:{port}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class LocalVertex:
    def __init__(self, fetch_artifact: Callable[[str, Path], Path] | None = None, deny: bool = False) -> None:
        """``fetch_artifact(gs_uri_dir, dest_dir)`` downloads model.mar for serving;
        ``deny`` answers every call 403, as Vertex does for an identity without roles."""
        self.fetch_artifact = fetch_artifact
        self.deny = deny
        self.resources: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()
        self.servers: dict[str, Callable[[list[Any]], list[Any]]] = {}
        self.datapoints: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.ids = itertools.count(1000)
        self.random = random.Random(0)
        self.http = LocalHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="local-vertex-"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> "LocalVertex":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.shutdown()
        self.http.server_close()
        # Deployed models' artifacts: gone with the server, never left in the temp dir.
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- resources ------------------------------------------------------------------

    def _new(self, parent: str, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        name = f"{parent}/{collection}/{next(self.ids)}"
        resource = {**body, "name": name, "createTime": _now(), "updateTime": _now()}
        self.resources[name] = resource
        return resource

    def _operation(self, parent: str, response: dict[str, Any] | None, type_name: str) -> dict[str, Any]:
        name = f"{parent}/operations/{next(self.ids)}"
        op: dict[str, Any] = {"name": name, "done": True,
                              "metadata": {"@type": V1 + "GenericOperationMetadata",
                                           "genericMetadata": {"createTime": _now(), "updateTime": _now()}}}
        if response is not None:
            op["response"] = {"@type": V1 + type_name, **response}
        else:
            op["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        self.resources[name] = op
        return op

    def _serve(self, model: dict[str, Any]) -> Callable[[list[Any]], list[Any]]:
        name = model["name"]
        if name not in self.servers:
            from .mar import load_in_torchserve

            if self.fetch_artifact is None:
                raise RuntimeError("LocalVertex was started without fetch_artifact: it cannot serve models")
            where = self.workdir / name.replace("/", "_")
            where.mkdir(parents=True, exist_ok=True)
            mar = self.fetch_artifact(model["artifactUri"], where)
            self.servers[name] = load_in_torchserve(mar, where)
        return self.servers[name]

    # --- routes ---------------------------------------------------------------------

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        if self.deny:
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message":
                                   "Permission 'aiplatform.models.upload' denied on resource (or it may not exist)."}}
        raw_path = path
        path = urllib.parse.unquote(path.split("?")[0])
        path = re.sub(r"@[^/:]+", "", path)  # models/123@1: one version per model here
        with self.lock:
            m = re.fullmatch(r"/v1(?:beta1)?/(projects/[^/]+/locations/[^/]+)/(.+)", path)
            if not m:
                return 404, {"error": {"code": 404, "message": f"no route {path}", "status": "NOT_FOUND"}}
            parent, rest = m.groups()
            if method == "POST" and rest == "models:upload":
                model = self._new(parent, "models", {**body["model"], "versionId": "1",
                                                      "versionAliases": ["default"],
                                                      "supportedDeploymentResourcesTypes": [1]})
                return 200, self._operation(parent, {"model": model["name"], "modelVersionId": "1"},
                                            "UploadModelResponse")
            if method == "POST" and rest in ("endpoints", "indexes", "indexEndpoints"):
                extra: dict[str, Any] = {}
                if rest == "indexEndpoints":
                    extra = {"publicEndpointDomainName": self.url, "deployedIndexes": []}
                if rest == "indexes":
                    extra = {"indexStats": {"vectorsCount": "0"}}
                resource = self._new(parent, rest, {**(body or {}), **extra})
                kind = {"endpoints": "Endpoint", "indexes": "Index", "indexEndpoints": "IndexEndpoint"}[rest]
                return 200, self._operation(parent, resource, kind)
            if method == "GET" and rest in ("endpoints", "models", "indexes", "indexEndpoints"):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
                wanted = re.fullmatch(r'display_name="(.*)"', (query.get("filter") or [""])[0])
                found = self._list(parent, rest)
                if wanted:
                    found = [r for r in found if r.get("displayName") == wanted.group(1)]
                return 200, {rest: found}
            name = f"{parent}/{rest}"
            if ":" in rest:
                resource_name, verb = name.rsplit(":", 1)
                return self._verb(parent, resource_name, verb, body)
            if method == "GET":
                found = self.resources.get(name)
                return (200, found) if found else (404, {"error": {"code": 404, "message": f"{name} not found",
                                                                   "status": "NOT_FOUND"}})
            if method == "PATCH":
                return self._patch(name, body or {}, urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query))
            if method == "DELETE":
                if name not in self.resources:
                    return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
                self.deleted.add(name)  # still readable, like a resource being deleted
                return 200, self._operation(parent, None, "")
        return 404, {"error": {"code": 404, "message": f"no route {method} {path}", "status": "NOT_FOUND"}}

    def _patch(self, name: str, body: dict[str, Any], query: dict[str, list[str]]) -> tuple[int, Any]:
        """An update with its field mask (``updateMask=traffic_split``); only an endpoint's
        traffic split, display name, description and labels may change."""
        resource = self.resources.get(name)
        if resource is None or name in self.deleted:
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        fields = {f.strip() for f in ",".join(query.get("updateMask") or query.get("update_mask") or []).split(",")
                  if f.strip()}
        camel = {"traffic_split": "trafficSplit", "display_name": "displayName", "description": "description",
                 "labels": "labels"}
        unknown = sorted(f for f in fields if f not in camel and f not in camel.values())
        if unknown or not fields:
            return 400, {"error": {"code": 400, "message": f"update mask {sorted(fields)} is not supported",
                                   "status": "INVALID_ARGUMENT"}}
        keys = {camel.get(f, f) for f in fields}
        if "trafficSplit" in keys:
            split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
            problem = self._split_problem(split, resource.get("deployedModels", []))
            if problem:
                return 400, {"error": {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}}
        for key in keys:
            resource[key] = body.get(key)
        resource["updateTime"] = _now()
        return 200, resource

    @staticmethod
    def _split_problem(split: dict[str, Any], deployed: list[dict[str, Any]]) -> str | None:
        """Why Vertex would refuse this traffic split, or None."""
        known = {d["id"] for d in deployed}
        strangers = sorted(set(split) - known)
        if strangers:
            return f"traffic split names deployed model {strangers[0]!r}, which is not deployed to this endpoint"
        if split and sum(int(v) for v in split.values()) != 100:
            return f"traffic split percentages must add up to 100, got {sum(int(v) for v in split.values())}"
        return None

    def _list(self, parent: str, collection: str) -> list[dict[str, Any]]:
        prefix = f"{parent}/{collection}/"
        return [r for n, r in self.resources.items()
                if n.startswith(prefix) and "/" not in n[len(prefix):] and n not in self.deleted]

    def _verb(self, parent: str, name: str, verb: str, body: Any) -> tuple[int, Any]:
        resource = self.resources.get(name)
        if resource is None or name in self.deleted:
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        if verb == "deployModel":
            deployed = {**body["deployedModel"], "id": str(next(self.ids)), "createTime": _now()}
            # The key "0" in the request's split is the model being deployed.
            split = {deployed["id"] if k == "0" else k: v for k, v in (body.get("trafficSplit") or {"0": 100}).items()}
            problem = self._split_problem(split, [*resource.get("deployedModels", []), deployed])
            if problem:
                return 400, {"error": {"code": 400, "message": problem, "status": "INVALID_ARGUMENT"}}
            resource.setdefault("deployedModels", []).append(deployed)
            resource["trafficSplit"] = split
            return 200, self._operation(parent, {"deployedModel": deployed}, "DeployModelResponse")
        if verb == "undeployModel":
            resource["deployedModels"] = [d for d in resource.get("deployedModels", [])
                                          if d["id"] != body["deployedModelId"]]
            resource["trafficSplit"] = {d["id"]: 100 for d in resource["deployedModels"][:1]}
            return 200, self._operation(parent, {}, "UndeployModelResponse")
        if verb == "predict":
            deployed = resource.get("deployedModels") or []
            if not deployed:
                return 400, {"error": {"code": 400, "message": f"endpoint {name} has no deployed model",
                                       "status": "FAILED_PRECONDITION"}}
            shares = {k: int(v) for k, v in (resource.get("trafficSplit") or {}).items() if int(v) > 0}
            if not shares:
                return 400, {"error": {"code": 400, "message": f"endpoint {name} sends no traffic to any model",
                                       "status": "FAILED_PRECONDITION"}}
            (chosen,) = self.random.choices(list(shares), weights=list(shares.values()))
            deployed = [d for d in deployed if d["id"] == chosen]
            model = self.resources[deployed[0]["model"].split("@")[0]]
            try:
                (reply,) = self._serve(model)([{"instances": body["instances"]}])
            except Exception as exc:  # noqa: BLE001 - the container's 400 for bad instances
                return 400, {"error": {"code": 400, "message": str(exc), "status": "INVALID_ARGUMENT"}}
            return 200, {**reply, "deployedModelId": deployed[0]["id"], "model": model["name"],
                         "modelDisplayName": model.get("displayName", "")}
        if verb == "upsertDatapoints":
            store = self.datapoints.setdefault(name, {})
            for point in body.get("datapoints", []):
                store[point["datapointId"]] = point
            resource["indexStats"] = {"vectorsCount": str(len(store))}
            return 200, {}
        if verb == "deployIndex":
            deployed = {**body["deployedIndex"], "createTime": _now()}
            resource.setdefault("deployedIndexes", []).append(deployed)
            return 200, self._operation(parent, {"deployedIndex": deployed}, "DeployIndexResponse")
        if verb == "undeployIndex":
            resource["deployedIndexes"] = [d for d in resource.get("deployedIndexes", [])
                                           if d["id"] != body["deployedIndexId"]]
            return 200, self._operation(parent, {}, "UndeployIndexResponse")
        if verb == "findNeighbors":
            return 200, self._find_neighbors(resource, body)
        return 404, {"error": {"code": 404, "message": f"verb {verb} not implemented", "status": "NOT_FOUND"}}

    def _find_neighbors(self, endpoint: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        deployed = {d["id"]: d for d in endpoint.get("deployedIndexes", [])}[body["deployedIndexId"]]
        points = self.datapoints.get(deployed["index"], {})
        results = []
        for query in body.get("queries", []):
            vector = np.array(query["datapoint"]["featureVector"], dtype=np.float32)
            allowed = []
            for point in points.values():
                ok = True
                for restrict in query["datapoint"].get("restricts", []):
                    mine = {r["namespace"]: set(r.get("allowList", [])) for r in point.get("restricts", [])}
                    if not mine.get(restrict["namespace"], set()) & set(restrict.get("allowList", [])):
                        ok = False
                for numeric in query["datapoint"].get("numericRestricts", []):
                    value = next((n.get("valueFloat") for n in point.get("numericRestricts", [])
                                  if n["namespace"] == numeric["namespace"]), None)
                    limit = numeric.get("valueFloat")
                    if value is None or not _compare(value, numeric.get("op", "EQUAL"), limit):
                        ok = False
                if ok:
                    allowed.append(point)
            scored = []
            for point in allowed:
                v = np.array(point["featureVector"], dtype=np.float32)
                cosine = float(v @ vector / ((np.linalg.norm(v) * np.linalg.norm(vector)) or 1.0))
                scored.append((1.0 - cosine, point))
            scored.sort(key=lambda item: item[0])
            k = int(query.get("neighborCount") or 10)
            results.append({"id": query["datapoint"].get("datapointId", ""), "neighbors": [
                {"datapoint": {"datapointId": p["datapointId"]}, "distance": d} for d, p in scored[:k]]})
        return {"nearestNeighbors": results}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        vertex = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, payload = vertex.route(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

            def do_DELETE(self) -> None:
                self._reply("DELETE")

            def do_PATCH(self) -> None:
                self._reply("PATCH")

        return Handler


NUMERIC_OPS = {1: "LESS", 2: "LESS_EQUAL", 3: "EQUAL", 4: "GREATER_EQUAL", 5: "GREATER", 6: "NOT_EQUAL"}


def _compare(value: float, op: str | int, limit: float) -> bool:
    op = NUMERIC_OPS.get(op, op) if isinstance(op, int) else op  # the SDK sends enums as ints
    return {
        "LESS": value < limit, "LESS_EQUAL": value <= limit, "EQUAL": value == limit,
        "GREATER_EQUAL": value >= limit, "GREATER": value > limit, "NOT_EQUAL": value != limit,
    }.get(op, False)


def gcs_fetcher(storage_endpoint: str, project: str = "local") -> Callable[[str, Path], Path]:
    """How LocalVertex gets a model's model.mar: from GCS (an emulator), as Vertex does."""

    def fetch(artifact_uri: str, dest: Path) -> Path:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": storage_endpoint})
        bucket, _, folder = artifact_uri[len("gs://"):].partition("/")
        target = dest / "model.mar"
        client.bucket(bucket).blob(f"{folder.rstrip('/')}/model.mar").download_to_filename(str(target))
        return target

    return fetch
