"""A local server speaking Weaviate's real REST and gRPC protocols, for tests (127.0.0.1).

No Weaviate binary can run here, so this implements the slice of the protocol the v4
client uses for a self-provided-vector collection, built on the protobuf stubs that
``weaviate-client`` itself ships. The unmodified client connects to it, creates, updates
and deletes collections over REST, batch-inserts over ``weaviate.v1.Weaviate/BatchObjects``,
deletes by filter over ``BatchDelete``, and searches over ``weaviate.v1.Weaviate/Search``
(near_vector with cosine distance, property filters, and the ``after`` cursor that
``collection.iterator()`` pages with). Not a database: everything lives in memory.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid as uuid_lib
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from loyaltylens_core.util.httpserver import LocalHTTPServer
from loyaltylens_core.sdk.standins import free_port  # noqa: F401 - re-exported for tests
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

VERSION = "1.30.0"

HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False, "cleanupIntervalSeconds": 300, "maxConnections": 32, "efConstruction": 128,
    "ef": -1, "dynamicEfMin": 100, "dynamicEfMax": 500, "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1000000000000, "flatSearchCutoff": 40000, "distance": "cosine",
    "pq": {"enabled": False, "bitCompression": False, "segments": 0, "centroids": 256,
           "trainingLimit": 100000, "encoder": {"type": "kmeans", "distribution": "log-normal"}},
    "bq": {"enabled": False}, "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "filterStrategy": "sweeping",
}
CLASS_DEFAULTS: dict[str, Any] = {
    "invertedIndexConfig": {"bm25": {"b": 0.75, "k1": 1.2}, "cleanupIntervalSeconds": 60,
                            "stopwords": {"preset": "en", "additions": None, "removals": None}},
    "multiTenancyConfig": {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False},
    "replicationConfig": {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"},
    "shardingConfig": {"virtualPerPhysical": 128, "desiredCount": 1, "actualCount": 1, "desiredVirtualCount": 128,
                       "actualVirtualCount": 128, "key": "_id", "strategy": "hash", "function": "murmur3"},
}


def _capitalise(name: str) -> str:
    return name[:1].upper() + name[1:]


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Fill in what a real Weaviate returns for a created class, so the client can parse it."""
    out = copy.deepcopy(config)
    out["class"] = _capitalise(out["class"])
    for key, value in CLASS_DEFAULTS.items():
        out.setdefault(key, copy.deepcopy(value))
    for prop in out.get("properties", []):
        is_text = prop["dataType"][0] in ("text", "text[]")
        prop.setdefault("indexFilterable", True)
        prop.setdefault("indexSearchable", is_text)
        prop.setdefault("indexRangeFilters", False)
        if is_text:
            prop.setdefault("tokenization", "word")
    if "vectorConfig" in out:
        for named in out["vectorConfig"].values():
            named.setdefault("vectorizer", {"none": {}})
            named.setdefault("vectorIndexType", "hnsw")
            named["vectorIndexConfig"] = {**HNSW_DEFAULTS, **(named.get("vectorIndexConfig") or {})}
    else:
        out.setdefault("vectorizer", "none")
        out.setdefault("vectorIndexType", "hnsw")
        out["vectorIndexConfig"] = {**HNSW_DEFAULTS, **(out.get("vectorIndexConfig") or {})}
    return out


def _vector_from(floats: Any, raw: bytes, vectors: Any) -> np.ndarray | None:
    if raw:
        return np.frombuffer(raw, dtype=np.float32).copy()
    for named in vectors or ():
        if named.vector_bytes:
            return np.frombuffer(named.vector_bytes, dtype=np.float32).copy()
    if len(floats):
        return np.array(floats, dtype=np.float32)
    return None


def _to_value(value: Any) -> properties_pb2.Value:
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return properties_pb2.Value(int_value=value)
    if isinstance(value, float):
        return properties_pb2.Value(number_value=value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return properties_pb2.Value(list_value=properties_pb2.ListValue(
                text_values=properties_pb2.TextValues(values=list(value))))
        return properties_pb2.Value(list_value=properties_pb2.ListValue(
            number_values=properties_pb2.NumberValues(values=np.asarray(value, dtype=np.float64).tobytes())))
    if value is None:
        return properties_pb2.Value(null_value=0)
    return properties_pb2.Value(text_value=str(value))


Op = base_pb2.Filters


def _filter_value(f: base_pb2.Filters) -> Any:
    which = [field.name for field, _ in f.ListFields() if field.name.startswith("value_")]
    if not which:
        return None
    value = getattr(f, which[0])
    return list(value.values) if which[0].endswith("_array") else value


def _matches(f: base_pb2.Filters, props: dict[str, Any]) -> bool:
    if f.operator == Op.OPERATOR_AND:
        return all(_matches(sub, props) for sub in f.filters)
    if f.operator == Op.OPERATOR_OR:
        return any(_matches(sub, props) for sub in f.filters)
    if f.operator == Op.OPERATOR_NOT:
        return not _matches(f.filters[0], props)
    name = f.target.property if f.HasField("target") else (f.on[0] if f.on else "")
    have, want = props.get(name), _filter_value(f)
    if f.operator == Op.OPERATOR_IS_NULL:
        return (have is None) == bool(want)
    if have is None:
        return False
    if f.operator == Op.OPERATOR_EQUAL:
        return have == want
    if f.operator == Op.OPERATOR_NOT_EQUAL:
        return have != want
    if f.operator == Op.OPERATOR_LESS_THAN:
        return have < want
    if f.operator == Op.OPERATOR_LESS_THAN_EQUAL:
        return have <= want
    if f.operator == Op.OPERATOR_GREATER_THAN:
        return have > want
    if f.operator == Op.OPERATOR_GREATER_THAN_EQUAL:
        return have >= want
    values = set(have) if isinstance(have, list) else {have}
    if f.operator == Op.OPERATOR_CONTAINS_ANY:
        return bool(values & set(want))
    if f.operator == Op.OPERATOR_CONTAINS_ALL:
        return set(want) <= values
    if f.operator == Op.OPERATOR_CONTAINS_NONE:
        return not values & set(want)
    raise NotImplementedError(f"filter operator {f.operator} is not implemented by the test server")


class LocalWeaviate:
    """Start with ``with LocalWeaviate() as w:``; connect to ``w.http_port`` / ``w.grpc_port``."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.classes: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.searches = 0
        self.batches = 0
        self.deletes = 0
        self.http = LocalHTTPServer(("127.0.0.1", 0), self._rest_handler())
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), self.grpc_server)
        self.grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(
                self._health,
                request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString)},
        )])
        self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def http_port(self) -> int:
        return self.http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> "LocalWeaviate":
        self._thread.start()
        self.grpc_server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.grpc_server.stop(grace=None)
        self.http.shutdown()
        self.http.server_close()

    def _health(self, request: Any, context: grpc.ServicerContext) -> Any:
        return health_weaviate_pb2.WeaviateHealthCheckResponse(
            status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING)

    def authorised(self, header: str | None) -> bool:
        return self.api_key is None or header == f"Bearer {self.api_key}"

    def objects(self, collection: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            found = self.classes.get(_capitalise(collection))
            if found is None:
                raise KeyError(collection)
            return found["objects"]

    # --- REST -----------------------------------------------------------------------

    def _rest_handler(self) -> type[BaseHTTPRequestHandler]:
        weaviate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any = None) -> None:
                body = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _guard(self) -> bool:
                if self.path.startswith("/v1/.well-known/") or self.path == "/v1/meta":
                    return True
                if weaviate.authorised(self.headers.get("Authorization")):
                    return True
                self._send(401, {"code": 401, "message": "anonymous access not enabled"})
                return False

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length", "0"))
                return json.loads(self.rfile.read(length) or b"null")

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/v1/.well-known/ready", "/v1/.well-known/live"):
                    self._send(200)
                elif path == "/v1/.well-known/openid-configuration":
                    self._send(404)
                elif path == "/v1/meta":
                    self._send(200, {"hostname": weaviate.url, "version": VERSION, "modules": {},
                                     "grpcMaxMessageSize": 104858000})
                elif not self._guard():
                    return
                elif path == "/v1/schema":
                    with weaviate.lock:
                        self._send(200, {"classes": [c["config"] for c in weaviate.classes.values()]})
                elif path.startswith("/v1/schema/"):
                    with weaviate.lock:
                        found = weaviate.classes.get(_capitalise(path[len("/v1/schema/"):]))
                    self._send(200, found["config"]) if found else self._send(404)
                else:
                    self._send(404, {"error": [{"message": f"no route {path}"}]})

            def do_POST(self) -> None:
                if not self._guard():
                    return
                if self.path != "/v1/schema":
                    self._send(404, {"error": [{"message": f"no route {self.path}"}]})
                    return
                config = _with_defaults(self._body())
                with weaviate.lock:
                    if config["class"] in weaviate.classes:
                        self._send(422, {"error": [{"message": f"class name {config['class']!r} already exists"}]})
                        return
                    weaviate.classes[config["class"]] = {"config": config, "objects": {}}
                self._send(200, config)

            def do_PUT(self) -> None:
                if not self._guard():
                    return
                if not self.path.startswith("/v1/schema/"):
                    self._send(404)
                    return
                update = self._body()
                with weaviate.lock:
                    found = weaviate.classes.get(_capitalise(self.path[len("/v1/schema/"):]))
                    if found is None:
                        self._send(404)
                        return
                    found["config"]["description"] = update.get("description", found["config"].get("description"))
                    config = found["config"]
                self._send(200, config)

            def do_DELETE(self) -> None:
                if not self._guard():
                    return
                if self.path.startswith("/v1/schema/"):
                    with weaviate.lock:
                        weaviate.classes.pop(_capitalise(self.path[len("/v1/schema/"):]), None)
                    self._send(200)
                else:
                    self._send(404)

        return Handler


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, weaviate: LocalWeaviate) -> None:
        self.weaviate = weaviate

    def _check(self, context: grpc.ServicerContext) -> None:
        headers = dict(context.invocation_metadata())
        if not self.weaviate.authorised(headers.get("authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "anonymous access not enabled")

    def BatchObjects(self, request: batch_pb2.BatchObjectsRequest, context: grpc.ServicerContext) -> Any:
        self._check(context)
        started = time.perf_counter()
        errors = []
        for index, obj in enumerate(request.objects):
            props = json_format.MessageToDict(obj.properties.non_ref_properties) if obj.properties.HasField(
                "non_ref_properties") else {}
            for array in obj.properties.text_array_properties:
                props[array.prop_name] = list(array.values)
            for array in obj.properties.number_array_properties:
                props[array.prop_name] = np.frombuffer(array.values_bytes, dtype=np.float64).tolist()
            vector = _vector_from(obj.vector, obj.vector_bytes, obj.vectors)
            try:
                objects = self.weaviate.objects(obj.collection)
            except KeyError:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(
                    index=index, error=f"class {obj.collection!r} not found"))
                continue
            with self.weaviate.lock:
                objects[obj.uuid] = {"properties": props, "vector": vector}
        self.weaviate.batches += 1
        return batch_pb2.BatchObjectsReply(took=time.perf_counter() - started, errors=errors)

    def Search(self, request: search_get_pb2.SearchRequest, context: grpc.ServicerContext) -> Any:
        self._check(context)
        started = time.perf_counter()
        try:
            objects = dict(self.weaviate.objects(request.collection))
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"class {request.collection!r} not found")
        rows = [(uid, o) for uid, o in objects.items()
                if not request.HasField("filters") or _matches(request.filters, o["properties"])]
        distances: dict[str, float] = {}
        if request.HasField("near_vector"):
            nv = request.near_vector
            query = _vector_from(nv.vector, nv.vector_bytes, nv.vectors)
            query = query / (np.linalg.norm(query) or 1.0)
            for uid, o in rows:
                v = o["vector"]
                distances[uid] = float(1.0 - (v @ query) / (np.linalg.norm(v) or 1.0))
            rows.sort(key=lambda r: distances[r[0]])
        if not request.HasField("near_vector"):
            rows.sort(key=lambda r: r[0])  # the iterator pages through objects in uuid order
            if request.after:
                rows = [r for r in rows if r[0] > request.after]
        limit = request.limit or 10
        wanted = list(request.properties.non_ref_properties)
        results = []
        for uid, o in rows[request.offset: request.offset + limit]:
            names = wanted if wanted else list(o["properties"])
            props = properties_pb2.Properties(
                fields={n: _to_value(o["properties"][n]) for n in names if n in o["properties"]})
            meta = search_get_pb2.MetadataResult(id=uid, id_as_bytes=uuid_lib.UUID(uid).bytes)
            if uid in distances and request.metadata.distance:
                meta.distance, meta.distance_present = distances[uid], True
            results.append(search_get_pb2.SearchResult(
                properties=search_get_pb2.PropertiesResult(non_ref_props=props, target_collection=request.collection),
                metadata=meta))
        self.weaviate.searches += 1
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)

    def BatchDelete(self, request: batch_delete_pb2.BatchDeleteRequest, context: grpc.ServicerContext) -> Any:
        self._check(context)
        started = time.perf_counter()
        try:
            objects = self.weaviate.objects(request.collection)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"class {request.collection!r} not found")
        with self.weaviate.lock:
            doomed = [uid for uid, o in objects.items() if _matches(request.filters, o["properties"])]
            if not request.dry_run:
                for uid in doomed:
                    del objects[uid]
        self.weaviate.deletes += 1
        return batch_delete_pb2.BatchDeleteReply(took=time.perf_counter() - started, failed=0,
                                                 matches=len(doomed), successful=len(doomed))

    def Aggregate(self, request: aggregate_pb2.AggregateRequest, context: grpc.ServicerContext) -> Any:
        self._check(context)
        try:
            count = len(self.weaviate.objects(request.collection))
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"class {request.collection!r} not found")
        return aggregate_pb2.AggregateReply(single_result=aggregate_pb2.AggregateReply.Single(objects_count=count))
